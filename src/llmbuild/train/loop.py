"""Pretrain / SFT on megatron-core: GPTModel + DDP + the plain Megatron optimizer.

The run works in ``<save>.partial/`` (checkpoints every ``save_interval`` steps, the JSONL log,
the dataset index cache, ``llmbuild_train.json`` = the run's identity) and renames it to
``<save>`` at the end. A rerun whose identity (arguments that change the result, and the
fingerprints of --load and --data) matches an existing ``.partial/`` resumes from its latest
checkpoint (断点续训); any other ``.partial/`` is discarded.

A non-finite loss (or, when the step was applied, gradient norm) stops the run at that step
on every rank (both are reduced over all ranks) with a UserError naming the step. Nothing more
is saved, ``<save>`` is not written, and ``.partial/`` is marked stopped
(``llmbuild_stopped.json``), so a rerun starts over from --load instead of resuming from
checkpoints that may already hold the diverged weights (those stay until the rerun, for a
look).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError
from llmbuild.mcore import checkpoint as ckpt
from llmbuild.mcore import model as M
from llmbuild.train import data as D

MODES = ("pretrain", "sft")
IDENTITY_FILE = "llmbuild_train.json"
STOPPED_FILE = "llmbuild_stopped.json"  # in .partial/: stopped on a non-finite loss
LOG_NAME = "train_log.jsonl"
# Arguments that do not change the trained weights (so a rerun may differ in them).
NOT_IDENTITY = ("load", "data", "save", "log", "save_interval", "log_interval", "threads", "device")


@dataclass
class TrainArgs:
    mode: str
    load: str
    data: str
    save: str
    log: str
    train_iters: int
    lr: float
    min_lr: float = 0.0
    warmup_iters: int = 0
    micro_batch_size: int = 1
    global_batch_size: int = 1
    seq_length: int = 128
    seed: int = 1234
    device: str = "cpu"
    save_interval: int = 0
    tp: int = 1
    pp: int = 1
    pp_layers: tuple[int, ...] | None = None  # uneven pipeline split: layers per stage
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    threads: int = 0
    log_interval: int = 10

    def __post_init__(self) -> None:
        def bad(flag: str, msg: str) -> UserError:
            return UserError(msg, field=flag)

        if self.mode not in MODES:
            raise bad("--mode", f"{self.mode!r}; use one of {', '.join(MODES)}")
        for flag, v in (
            ("--train-iters", self.train_iters),
            ("--micro-batch-size", self.micro_batch_size),
            ("--global-batch-size", self.global_batch_size),
            ("--tp", self.tp),
            ("--pp", self.pp),
            ("--log-interval", self.log_interval),
        ):
            if v < 1:
                raise bad(flag, f"must be >= 1, got {v}")
        if self.pp_layers is not None:
            self.pp_layers = tuple(int(n) for n in self.pp_layers)
            if len(self.pp_layers) != self.pp or min(self.pp_layers) < 1:
                raise bad(
                    "--pp-layers",
                    f"{','.join(map(str, self.pp_layers))} must give one layer count >= 1 "
                    f"per pipeline stage (--pp {self.pp})",
                )
        if self.seq_length < 2:
            raise bad("--seq-length", f"must be >= 2, got {self.seq_length}")
        if not self.lr > 0:
            raise bad("--lr", f"must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise bad("--min-lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")
        if not 0 <= self.warmup_iters < self.train_iters:
            raise bad(
                "--warmup-iters",
                f"must be in [0, train_iters={self.train_iters}), got {self.warmup_iters}",
            )
        if self.global_batch_size % self.micro_batch_size:
            raise bad(
                "--global-batch-size",
                f"{self.global_batch_size} is not a multiple of "
                f"--micro-batch-size {self.micro_batch_size}",
            )
        if self.save_interval < 0 or self.threads < 0:
            raise bad("--save-interval/--threads", "must be >= 0")
        if self.clip_grad < 0:
            raise bad("--clip-grad", f"must be >= 0, got {self.clip_grad}")
        if Path(self.save).resolve() == Path(self.load).resolve():
            raise bad("--save", "must differ from --load")

    def identity(self) -> dict[str, Any]:
        """The arguments that change the result, as JSON would store them (an even split
        leaves pp_layers out, so the identity of such runs is what it always was)."""
        out = {k: v for k, v in asdict(self).items() if k not in NOT_IDENTITY}
        if self.pp_layers is None:
            del out["pp_layers"]
        else:
            out["pp_layers"] = list(self.pp_layers)
        return out


@dataclass
class StepRecord:
    step: int
    loss: float
    lr: float
    grad_norm: float | None
    tokens: int
    elapsed: float
    tokens_per_s: float
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


# --------------------------------------------------------------------------- identity


def fingerprint(path: str | Path) -> str:
    """Cheap identity of an input directory: every file's relative path and size, plus the
    content of the small ones (metadata, indexes, configs)."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if rel.startswith(".") or rel == "provenance.json":
            continue
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\n".encode())
        if size <= 1 << 20:
            h.update(f.read_bytes())
    return h.hexdigest()


def run_identity(a: TrainArgs) -> dict[str, Any]:
    return {"args": a.identity(), "load": fingerprint(a.load), "data": fingerprint(a.data)}


def partial_dir(save: str | Path) -> Path:
    return Path(str(save).rstrip("/") + ".partial")


def _rank() -> int:
    import torch

    d = torch.distributed
    return d.get_rank() if d.is_initialized() else 0


# --------------------------------------------------------------------------- loss / step


def _loss_func(loss_mask: Any, output_tensor: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Megatron's per-token loss contract: (sum of losses, token count, report)."""
    import torch

    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.reshape(-1).float()
    loss = torch.sum(losses * mask)
    n = mask.sum().to(torch.int)
    report = torch.stack([loss.detach(), mask.sum().detach()])
    return loss, n, {"lm loss": report}


def _forward_step(device: Any, data_iterator: Any, model: Any) -> tuple[Any, Any]:
    import torch

    b = next(data_iterator)
    tokens = b["tokens"].to(device)
    bsz, seq = tokens.shape
    position_ids = torch.arange(seq, device=device).unsqueeze(0).expand(bsz, -1)
    if b["segments"] is None:
        mask = M.causal_attention_mask(seq, device)
    else:
        mask = D.packed_attention_mask(b["segments"]).to(device)
    out = model(tokens, position_ids, mask, labels=b["labels"].to(device))
    return out, partial(_loss_func, b["loss_mask"].to(device))


# --------------------------------------------------------------------------- the run


def _check_inputs(a: TrainArgs) -> tuple[D.DataMeta, M.ModelDescription]:
    meta = D.read_meta(a.data)
    if meta.kind != a.mode:
        raise UserError(
            f"a {meta.kind} dataset given to --mode {a.mode}", path=a.data, field="kind"
        )
    desc = M.load_description(a.load)
    ckpt.latest_dir(a.load)
    if meta.vocab_size > desc.args.vocab_size:
        raise UserError(
            f"tokenizer vocabulary {meta.vocab_size} > model vocabulary {desc.args.vocab_size}",
            path=Path(a.data) / "meta.json",
            field="vocab_size",
        )
    if a.seq_length > desc.args.max_position_embeddings:
        raise UserError(
            f"{a.seq_length} > the model's max_position_embeddings "
            f"{desc.args.max_position_embeddings}",
            field="--seq-length",
        )
    if a.device == "cpu" and desc.dtype != "float32":
        raise UserError(
            f"the checkpoint is {desc.dtype}; CPU training needs float32 "
            "(convert with `llmbuild convert hf2mg --dtype float32`)",
            path=a.load,
            field="dtype",
        )
    desc.args.check_parallel(a.tp, a.pp, a.pp_layers)
    return meta, desc


def _prepare_work(a: TrainArgs, identity: dict[str, Any], say: Callable[[str], None]) -> bool:
    """Make ``<save>.partial``; True if it holds a resumable checkpoint of this same run."""
    work = partial_dir(a.save)
    ident_path = work / IDENTITY_FILE
    if work.is_dir():
        same = False
        try:
            same = json.loads(ident_path.read_text()) == identity
        except (OSError, json.JSONDecodeError):
            pass
        stopped = _stopped_reason(work)
        if same and stopped is None and ckpt.read_latest(work) is not None:
            return True
        if stopped is not None:
            why = f"it stopped at {stopped}"
        else:
            why = "no checkpoint yet" if same else "a different run"
        say(f"discarding {work} ({why})")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ident_path.write_text(json.dumps(identity, indent=2) + "\n")
    return False


def _stopped_reason(work: Path) -> str | None:
    """Why the run in ``work`` stopped ("step N: loss is nan"), or None if it did not."""
    path = work / STOPPED_FILE
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text())["reason"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return "a non-finite loss"


def non_finite(loss: float, grad_norm: float | None, applied: bool) -> str | None:
    """What is not finite after a step ("loss is nan", "gradient norm is inf (loss 2.3)"), or
    None. A gradient norm counts only when the step was applied (fp16 loss scaling skips steps
    with inf/nan gradients by design; bf16/fp32 apply them and the weights are lost)."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if applied and grad_norm is not None and not math.isfinite(grad_norm):
        return f"gradient norm is {grad_norm} (loss {loss:.4f})"
    return None


def _stop(a: TrainArgs, work: Path, step: int, what: str) -> UserError:
    """Mark ``.partial`` stopped (rank 0) and the error every rank raises."""
    reason = f"step {step}: {what}"
    if _rank() == 0:
        (work / STOPPED_FILE).write_text(json.dumps({"step": step, "reason": reason}) + "\n")
    return UserError(
        f"{reason}; training stopped (lower train.{a.mode}.lr, check the data); nothing "
        f"saved, a rerun starts over from {a.load}"
    )


def _prune(work: Path, keep: int) -> None:
    for d in work.glob("iter_*"):
        if d.name != ckpt.iter_name(keep):
            shutil.rmtree(d, ignore_errors=True)


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
    meta, desc = _check_inputs(a)
    identity = run_identity(a)
    work = partial_dir(a.save)
    # Every rank decides the same way: rank 0 prepares, the others follow after init.
    resume = False
    if int(os.environ.get("RANK", "0")) == 0:
        resume = _prepare_work(a, identity, say)
    backend = dev.init_backend(a.device, tp=a.tp, pp=a.pp, seed=a.seed, threads=a.threads or None)
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
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel as DDP
    from megatron.core.distributed import DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.pipeline_parallel import get_forward_backward_func

    rank0 = backend.rank == 0
    dp = backend.dp
    if a.global_batch_size % (a.micro_batch_size * dp):
        raise UserError(
            f"{a.global_batch_size} is not a multiple of micro batch "
            f"{a.micro_batch_size} x data-parallel size {dp}",
            field="--global-batch-size",
        )
    num_micro = a.global_batch_size // (a.micro_batch_size * dp)
    tdev = backend.torch_device

    config, model = M.build_for_this_rank(
        desc,
        tp=a.tp,
        pp=a.pp,
        device=a.device,
        pp_layers=a.pp_layers,
        calculate_per_token_loss=True,
    )
    model.to(tdev)
    ddp = DDP(
        config,
        DistributedDataParallelConfig(use_distributed_optimizer=False, grad_reduce_in_fp32=True),
        model,
    )
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = ddp.no_sync
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=a.lr,
            min_lr=a.min_lr,
            weight_decay=a.weight_decay,
            adam_beta1=a.adam_beta1,
            adam_beta2=a.adam_beta2,
            adam_eps=a.adam_eps,
            clip_grad=a.clip_grad,
            use_distributed_optimizer=False,
            bf16=desc.dtype == "bfloat16",
            fp16=desc.dtype == "float16",
        ),
        [ddp],
    )
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=a.lr,
        min_lr=a.min_lr,
        lr_warmup_steps=a.warmup_iters,
        lr_decay_steps=a.train_iters,
        lr_decay_style="cosine",
        start_wd=a.weight_decay,
        end_wd=a.weight_decay,
        wd_incr_steps=a.train_iters,
        wd_incr_style="constant",
    )

    log_path = work / LOG_NAME
    start_step, tokens_done, elapsed_before = 0, 0, 0.0
    if resume:
        it = ckpt.read_latest(work) or 0
        finished = it >= a.train_iters
        start_step, common = ckpt.load(
            work,
            model,
            optimizer=None if finished else optimizer,
            scheduler=None if finished else scheduler,
        )
        st = common.get("llmbuild", {})
        tokens_done, elapsed_before = int(st.get("tokens", 0)), float(st.get("elapsed", 0.0))
        if rank0:
            _truncate_log(log_path, start_step)
        say(f"resuming {work} at step {start_step}/{a.train_iters}")
    else:
        it, _ = ckpt.load(a.load, model)
        say(
            f"loaded {a.load} (iteration {it}); training {a.train_iters} steps "
            f"({a.mode}, global batch {a.global_batch_size} = {num_micro} x micro "
            f"{a.micro_batch_size} x dp {dp}, seq {a.seq_length})"
        )

    if a.mode == "pretrain":
        source: Any = D.PretrainSource(
            meta,
            seq_length=a.seq_length,
            seed=a.seed,
            num_samples=a.train_iters * a.global_batch_size,
            cache_dir=work / "data_cache",
        )
    else:
        source = D.SftSource(meta, seq_length=a.seq_length, seed=a.seed)
        if source.truncated:
            say(
                f"warning: {source.truncated} examples are longer than seq_length+1 and are "
                "truncated"
            )

    forward_backward = get_forward_backward_func()
    dp_rank = parallel_state.get_data_parallel_rank()
    first_loss: float | None = None
    last_loss = float("nan")
    run_start = time.time()
    t_prev = run_start
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
            forward_step_func=partial(_forward_step, tdev),
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
        stats = torch.zeros(3, dtype=torch.float64)
        for r in reports:
            stats[:2] += r["lm loss"].detach().to("cpu", torch.float64)
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
            raise _stop(a, work, step + 1, bad)
        tokens_done += int(stats[2])
        now = time.time()
        dt = now - t_prev
        t_prev = now
        first_loss = loss if first_loss is None else first_loss
        last_loss = loss
        rec = StepRecord(
            step=step + 1,
            loss=loss,
            lr=lr_used,
            grad_norm=None if grad_norm is None else float(grad_norm),
            tokens=tokens_done,
            elapsed=round(elapsed_before + now - run_start, 4),
            tokens_per_s=round(int(stats[2]) / max(dt, 1e-9), 2),
            phase=a.mode,
        )
        if rank0:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(asdict(rec)) + "\n")
        done = step + 1 - start_step
        if done == 1 or (step + 1) % a.log_interval == 0 or step + 1 == a.train_iters:
            rate = done / max(now - run_start, 1e-9)
            eta = (a.train_iters - step - 1) / rate if rate > 0 else float("inf")
            gn = "n/a" if grad_norm is None else f"{grad_norm:.3f}"
            say(
                f"step {step + 1}/{a.train_iters} loss {loss:.4f} lr {rec.lr:.3g} "
                f"grad_norm {gn} | {rec.tokens_per_s:.0f} tok/s, {1 / rate:.2f} s/step, "
                f"ETA {eta:.0f}s" + ("" if ok else " (step skipped: inf/nan)")
            )
        if a.save_interval and (step + 1) % a.save_interval == 0 and step + 1 < a.train_iters:
            _save(
                work,
                step + 1,
                ddp,
                optimizer,
                scheduler,
                tokens_done,
                elapsed_before + time.time() - run_start,
            )
            say(f"checkpoint {step + 1} -> {work}")
            t_prev = time.time()  # the next step's rate excludes the save

    total_elapsed = elapsed_before + time.time() - run_start
    steps_run = a.train_iters - start_step
    if start_step < a.train_iters:
        _save(work, a.train_iters, ddp, None, None, tokens_done, total_elapsed)
    if rank0:
        _finish(a, desc, work, total_elapsed, started, provenance_args)
    if backend.world_size > 1:
        torch.distributed.barrier()
    return TrainResult(
        steps=a.train_iters,
        resumed_from=start_step,
        final_loss=last_loss,
        first_loss=first_loss,
        tokens=tokens_done,
        elapsed=total_elapsed,
        seconds_per_step=(time.time() - run_start) / max(steps_run, 1),
    )


def _save(
    work: Path, step: int, ddp: Any, optimizer: Any, scheduler: Any, tokens: int, elapsed: float
) -> None:
    # The common state must be the same on every rank (megatron warns otherwise); each rank
    # has its own clock, so the time is rank 0's.
    elapsed = _from_rank0(elapsed)
    ckpt.save(
        work,
        step,
        ddp.module,
        optimizer=optimizer,
        scheduler=scheduler,
        common={"llmbuild": {"tokens": tokens, "elapsed": elapsed}},
    )
    if _rank() == 0:
        _prune(work, step)


def _from_rank0(value: Any) -> Any:
    import torch

    d = torch.distributed
    if not d.is_initialized() or d.get_world_size() == 1:
        return value
    box = [value]
    d.broadcast_object_list(box, src=0)
    return box[0]


def _truncate_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError):
            break
    path.write_text("".join(x + "\n" for x in keep))


def _finish(
    a: TrainArgs,
    desc: M.ModelDescription,
    work: Path,
    elapsed: float,
    started: float,
    provenance_args: dict[str, Any],
) -> None:
    """Publish: the log file, then ``<save>.partial`` renamed to ``<save>``."""
    from llmbuild import provenance
    from llmbuild.atomic import atomic_file

    shutil.rmtree(work / "data_cache", ignore_errors=True)
    _prune(work, a.train_iters)
    # The layout this checkpoint was written with (the loaded one's may differ).
    extra = {k: v for k, v in desc.extra.items() if k != "pp_layers"}
    if a.pp_layers is not None:
        extra["pp_layers"] = list(a.pp_layers)
    trained = M.ModelDescription(
        hf_config=desc.hf_config,
        args=desc.args,
        tp=a.tp,
        pp=a.pp,
        dtype=desc.dtype,
        extra={
            **extra,
            "trained": {"mode": a.mode, "iterations": a.train_iters, "from": str(a.load)},
        },
    )
    M.save_description(work, trained)
    with atomic_file(a.log) as fh, open(work / LOG_NAME) as src:
        shutil.copyfileobj(src, fh)
    provenance.write(
        work,
        command="llmbuild train run",
        args=provenance_args,
        inputs=[a.load, a.data],
        started=started,
        extra={"elapsed_training_s": round(elapsed, 3)},
    )
    save = Path(a.save)
    if save.exists():
        shutil.rmtree(save) if save.is_dir() else save.unlink()
    os.replace(work, save)
