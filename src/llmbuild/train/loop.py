"""Pretrain / SFT / DPO on megatron-core: the step loop.

``run`` checks the inputs, prepares ``<output>.partial`` (train/resume.py: resume a rerun of
the same run, else start over), builds this rank's model, optimizer and batch source
(train/setup.py) and runs the steps, logging each one (JSONL) and checkpointing every
``save_interval``; rank 0 then publishes ``<output>``.

A non-finite loss (or, when the step was applied, gradient norm) stops the run at that step
on every rank (both are reduced over all ranks) with a UserError naming the step. Nothing more
is saved, ``<output>`` is not written, and ``.partial/`` is marked stopped
(``llmbuild_stopped.json``), so a rerun starts over from --input instead of resuming from
checkpoints that may already hold the diverged weights (those stay until the rerun, for a
look).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError
from llmbuild.mcore import checkpoint as ckpt
from llmbuild.mcore import model as M
from llmbuild.train import data as D
from llmbuild.train import setup as S
from llmbuild.train.resume import (
    LOG_NAME,
    TrainArgs,
    mark_stopped,
    partial_dir,
    prepare_work,
    publish,
    run_identity,
    truncate_log,
)


@dataclass
class StepRecord:
    step: int
    loss: float
    lr: float
    grad_norm: float | None
    tokens: int
    elapsed: float
    tokens_per_s: float
    tokens_per_s_per_device: float
    devices: int
    phase: str


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    final_loss: float
    first_loss: float | None
    tokens: int
    elapsed: float
    seconds_per_step: float


def non_finite(loss: float, grad_norm: float | None, applied: bool) -> str | None:
    """What is not finite after a step ("loss is nan", "gradient norm is inf (loss 2.3)"), or
    None. A gradient norm counts only when the step was applied (fp16 loss scaling skips steps
    with inf/nan gradients by design; bf16/fp32 apply them and the weights are lost)."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if applied and grad_norm is not None and not math.isfinite(grad_norm):
        return f"gradient norm is {grad_norm} (loss {loss:.4f})"
    return None


def _stop(a: TrainArgs, work: Path, step: int, what: str, phase: str) -> UserError:
    """Mark ``.partial`` stopped (rank 0) and the error every rank raises."""
    reason = f"step {step}: {what}"
    if S.rank() == 0:
        mark_stopped(work, step, reason)
    return UserError(
        f"{reason}; training stopped (lower train.{phase}.lr, check the data); nothing "
        f"saved, a rerun starts over from {a.input}"
    )


@dataclass
class Progress:
    """Where a run of steps stands: what it resumed from and what it has done."""

    start_step: int = 0
    tokens: int = 0
    elapsed_before: float = 0.0  # training seconds of the runs this one resumes
    first_loss: float | None = None
    last_loss: float = float("nan")
    run_start: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.run_start


def run(
    a: TrainArgs,
    *,
    say: Callable[[str], None],
    started: float | None = None,
    provenance_args: dict[str, Any] | None = None,
) -> TrainResult:
    """Train; ``say`` receives the human log lines (rank 0)."""
    import torch

    from llmbuild.mcore import device as dev

    started = started or time.time()
    meta, desc = S.check_inputs(a)
    identity = run_identity(a)
    work = partial_dir(a.output)
    # Every rank decides the same way: rank 0 prepares, the others follow after init.
    resume = False
    if int(os.environ.get("RANK", "0")) == 0:
        resume = prepare_work(a, identity, say)
    backend = dev.init_backend(a.device, tp=a.tp, pp=a.pp, seed=a.seed, threads=a.threads or None)
    if backend.dp != a.dp:
        dev.shutdown()
        raise UserError(
            f"{backend.world_size} ranks make data-parallel size {backend.dp}, not --dp {a.dp}; "
            f"start tp * pp * dp = {a.tp * a.pp * a.dp} ranks (torchrun --nproc_per_node)",
            field="--dp",
        )
    box = [resume]
    if backend.world_size > 1:
        torch.distributed.broadcast_object_list(box, src=0)
    resume = bool(box[0])
    try:
        return _train(
            a, meta, desc, backend, work, resume, say, started, provenance_args or asdict(a)
        )
    finally:
        dev.shutdown()


def _train(
    a: TrainArgs,
    meta: D.DataMeta,
    desc: M.ModelDescription,
    backend: Any,
    work: Path,
    resume: bool,
    say: Callable[[str], None],
    started: float,
    provenance_args: dict[str, Any],
) -> TrainResult:
    import torch

    rank0 = backend.rank == 0
    t = S.build(a, desc, backend)
    ddp, optimizer, scheduler, num_micro = t.ddp, t.optimizer, t.scheduler, t.num_micro
    log_path = work / LOG_NAME
    start_step, tokens_done, elapsed_before = 0, 0, 0.0
    if resume:
        it = ckpt.read_latest(work) or 0
        finished = it >= a.train_iters
        start_step, common = ckpt.load(
            work,
            ddp.module,
            optimizer=None if finished else optimizer,
            scheduler=None if finished else scheduler,
        )
        st = common.get("llmbuild", {})
        tokens_done, elapsed_before = int(st.get("tokens", 0)), float(st.get("elapsed", 0.0))
        if rank0:
            truncate_log(log_path, start_step)
        say(f"resuming {work} at step {start_step}/{a.train_iters}")
    else:
        it, _ = ckpt.load(a.input, ddp.module)
        say(
            f"loaded {a.input} (iteration {it}); training {a.train_iters} steps "
            f"({a.mode}, global batch {a.global_batch_size} = {num_micro} x micro "
            f"{a.micro_batch_size} x dp {backend.dp}, seq {a.seq_length})"
        )
    source = S.batch_source(a, meta, work, say)
    p = Progress(start_step, tokens_done, elapsed_before)
    steps(a, t, source, backend, work, say, p, phase=a.mode)

    total_elapsed = p.elapsed()
    steps_run = a.train_iters - start_step
    if start_step < a.train_iters:
        S.save(work, a.train_iters, t, p.tokens, total_elapsed, final=True)
    if rank0:
        publish(a, desc, work, total_elapsed, started, provenance_args)
    if backend.world_size > 1:
        torch.distributed.barrier()
    return TrainResult(
        steps=a.train_iters,
        resumed_from=start_step,
        final_loss=p.last_loss,
        first_loss=p.first_loss,
        tokens=p.tokens,
        elapsed=total_elapsed,
        seconds_per_step=(time.time() - p.run_start) / max(steps_run, 1),
    )


def steps(
    a: TrainArgs,
    t: S.Trainer,
    source: Any,
    backend: Any,
    work: Path,
    say: Callable[[str], None],
    p: Progress,
    *,
    phase: str,
) -> None:
    """Steps ``p.start_step`` .. ``a.train_iters`` of every mode (pretrain, SFT, DPO, LoRA):
    one JSONL record per step (rank 0), a log line every ``log_interval`` with rate and ETA,
    a checkpoint every ``save_interval``, and a stop on every rank at a non-finite step."""
    import torch
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    rank0 = backend.rank == 0
    tdev = backend.torch_device
    ddp, optimizer, scheduler, num_micro = t.ddp, t.optimizer, t.scheduler, t.num_micro
    log_path = work / LOG_NAME
    forward_backward = get_forward_backward_func()
    dp_rank = parallel_state.get_data_parallel_rank()
    start_step = p.start_step
    p.run_start = t_prev = time.time()
    ddp.train()
    for step in range(start_step, a.train_iters):
        base = step * a.global_batch_size + dp_rank * num_micro * a.micro_batch_size
        batches = [
            source.batch(base + m * a.micro_batch_size, a.micro_batch_size)
            for m in range(num_micro)
        ]
        step_tokens = sum(
            int(b["tokens"].numel() if b["segments"] is None else (b["segments"] > 0).sum())
            for b in batches
        )
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        reports = forward_backward(
            forward_step_func=t.forward_step,
            data_iterator=iter(batches),
            model=[ddp],
            num_microbatches=num_micro,
            seq_length=a.seq_length,
            micro_batch_size=a.micro_batch_size,
            forward_only=False,
        )
        lr_used = float(optimizer.param_groups[0]["lr"])
        ok, grad_norm, _ = optimizer.step()
        scheduler.step(increment=1)
        # [loss sum, loss count, tokens, then (sum, count) per metric]: one all-reduce
        stats = torch.zeros(3 + 2 * len(t.metrics), dtype=torch.float64)
        for r in reports:
            stats[:2] += r["lm loss"].detach().to("cpu", torch.float64)
            for k, name in enumerate(t.metrics):
                stats[3 + 2 * k : 5 + 2 * k] += r[name].detach().to("cpu", torch.float64)
        stats[2] = (
            step_tokens
            if parallel_state.get_tensor_model_parallel_rank() == 0
            and parallel_state.is_pipeline_first_stage()
            else 0
        )
        if backend.world_size > 1:
            reduced = stats.to(tdev)
            torch.distributed.all_reduce(reduced)
            stats = reduced.cpu()
        loss = float(stats[0] / max(stats[1], 1.0))
        # the same on every rank (loss all-reduced, grad norm reduced by the optimizer): all stop
        bad = non_finite(loss, None if grad_norm is None else float(grad_norm), bool(ok))
        if bad is not None:
            raise _stop(a, work, step + 1, bad, phase)
        p.tokens += int(stats[2])
        now = time.time()
        dt = now - t_prev
        t_prev = now
        p.first_loss = loss if p.first_loss is None else p.first_loss
        p.last_loss = loss
        rec = StepRecord(
            step=step + 1,
            loss=loss,
            lr=lr_used,
            grad_norm=None if grad_norm is None else float(grad_norm),
            tokens=p.tokens,
            elapsed=round(p.elapsed_before + now - p.run_start, 4),
            tokens_per_s=round(int(stats[2]) / max(dt, 1e-9), 2),
            tokens_per_s_per_device=round(int(stats[2]) / max(dt, 1e-9) / backend.world_size, 2),
            devices=backend.world_size,
            phase=phase,
        )
        line = asdict(rec)
        for k, name in enumerate(t.metrics):  # e.g. DPO's reward margin and accuracy
            line[name] = round(float(stats[3 + 2 * k] / max(stats[4 + 2 * k], 1.0)), 6)
        if rank0:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(line) + "\n")
        done = step + 1 - start_step
        if done == 1 or (step + 1) % a.log_interval == 0 or step + 1 == a.train_iters:
            rate = done / max(now - p.run_start, 1e-9)
            eta = (a.train_iters - step - 1) / rate if rate > 0 else float("inf")
            gn = "n/a" if grad_norm is None else f"{grad_norm:.3f}"
            say(
                f"step {step + 1}/{a.train_iters} loss {loss:.4f} lr {rec.lr:.3g} "
                f"grad_norm {gn} | {rec.tokens_per_s:.0f} tok/s "
                f"({rec.tokens_per_s_per_device:.0f} per device), {1 / rate:.2f} s/step, "
                f"ETA {eta:.0f}s"
                + "".join(f" | {name} {line[name]:.4f}" for name in t.metrics)
                + ("" if ok else " (step skipped: inf/nan)")
            )
        if a.save_interval and (step + 1) % a.save_interval == 0 and step + 1 < a.train_iters:
            S.save(work, step + 1, t, p.tokens, p.elapsed())
            say(f"checkpoint {step + 1} -> {work}")
            t_prev = time.time()  # the next step's rate excludes the save
