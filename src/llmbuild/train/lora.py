"""LoRA fine-tuning on megatron-core: a frozen base checkpoint, trained adapters, saved alone.

``run_lora`` loads the base checkpoint (--input, any TP/PP: megatron reshards on load) into
this rank's GPTModel, freezes it, wraps the target linear layers (``mcore/lora.py``), and
trains only the adapters on an instruction dataset with the same batches, loss, optimizer
and schedule as SFT (``train/setup.py``). The output is the Megatron LoRA adapter directory
``convert/lora.py`` reads (``llmbuild convert lora2hf`` turns it into a PEFT adapter)::

    <output>/lora_config.json      {"r", "alpha", "dropout", "use_rslora", "target_modules",
                                    "trained": {...}}
    <output>/adapter.safetensors   the global tensors, decoder.layers.{i}.<module>.lora_A/B.weight
    <output>/train_log.jsonl       one record per step (as pretrain / SFT write it)
    <output>/provenance.json

The run works in ``<output>.partial/`` and renames it into place at the end; a rerun starts
over (an adapter trains in minutes; no intermediate saves). A non-finite loss stops every rank
at that step with one line, and nothing is published.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from llmbuild.convert.lora import LORA_CONFIG, LORA_WEIGHTS
from llmbuild.errors import UserError
from llmbuild.mcore import checkpoint as ckpt
from llmbuild.mcore import model as M
from llmbuild.train import data as D
from llmbuild.train import setup as S
from llmbuild.train.loop import StepRecord, TrainResult, non_finite
from llmbuild.train.resume import (
    LOG_NAME,
    TrainArgs,
    partial_dir,
    prepare_work,
    run_identity,
)

ALL_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


@dataclass
class LoraArgs:
    """The adapter's shape: rank, alpha (scale alpha / rank), dropout on its input, and the
    megatron linear layers it adapts."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = field(default=ALL_TARGETS)

    def __post_init__(self) -> None:
        from llmbuild.mcore.lora import check_targets

        if self.rank < 1:
            raise UserError(f"must be >= 1, got {self.rank}", field="--rank")
        if not self.alpha > 0:
            raise UserError(f"must be > 0, got {self.alpha}", field="--alpha")
        if not 0 <= self.dropout < 1:
            raise UserError(f"must be in [0, 1), got {self.dropout}", field="--dropout")
        self.target_modules = check_targets(self.target_modules)

    def config_json(self) -> dict[str, Any]:
        """lora_config.json's adapter fields (convert/lora.py's LoraConfig)."""
        return {
            "r": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "use_rslora": False,
            "target_modules": list(self.target_modules),
        }


def lora_identity(a: TrainArgs, lo: LoraArgs) -> dict[str, Any]:
    return run_identity(a) | {"lora": asdict(lo) | {"target_modules": list(lo.target_modules)}}


@dataclass
class LoraTrainer:
    ddp: Any
    optimizer: Any
    scheduler: Any
    num_micro: int
    wrapped: int  # linear layers with an adapter on this rank
    trainable: int  # trainable parameters on this rank


def build(a: TrainArgs, lo: LoraArgs, desc: M.ModelDescription, backend: Any) -> LoraTrainer:
    """This rank's base model (weights from --input, frozen) with its adapters, in DDP, and
    the optimizer and schedule over the adapters alone (after ``device.init_backend``)."""
    from megatron.core.distributed import DistributedDataParallel as DDP
    from megatron.core.distributed import DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from llmbuild.mcore import lora as ML

    dp = backend.dp
    if a.global_batch_size % (a.micro_batch_size * dp):
        raise UserError(
            f"{a.global_batch_size} is not a multiple of micro batch "
            f"{a.micro_batch_size} x data-parallel size {dp}",
            field="--global-batch-size",
        )
    config, model = M.build_for_this_rank(
        desc,
        tp=a.tp,
        pp=a.pp,
        device=a.device,
        pp_layers=a.pp_layers,
        calculate_per_token_loss=True,
    )
    model.to(backend.torch_device)
    ckpt.load(a.input, model)  # the base weights, before the adapters change the module tree
    wrapped = ML.inject(
        model,
        r=lo.rank,
        alpha=lo.alpha,
        dropout=lo.dropout,
        targets=lo.target_modules,
        seed=a.seed,
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
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
    num_micro = a.global_batch_size // (a.micro_batch_size * dp)
    return LoraTrainer(ddp, optimizer, scheduler, num_micro, wrapped, trainable)


def run_lora(
    a: TrainArgs,
    lo: LoraArgs,
    *,
    say: Callable[[str], None],
    started: float | None = None,
    provenance_args: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the adapters; ``say`` receives the human log lines (rank 0)."""
    import torch

    from llmbuild.mcore import device as dev

    started = started or time.time()
    if a.mode != "sft":
        raise UserError("LoRA trains on instruction data (--mode sft)", field="--mode")
    if a.save_interval:
        raise UserError(
            "intermediate saves are not supported for LoRA (a rerun starts over)",
            field="--save-interval",
        )
    meta, desc = S.check_inputs(a)
    work = partial_dir(a.output)
    if int(os.environ.get("RANK", "0")) == 0:
        prepare_work(a, lora_identity(a, lo), say)  # no checkpoints inside: always fresh
    backend = dev.init_backend(a.device, tp=a.tp, pp=a.pp, seed=a.seed, threads=a.threads or None)
    if backend.world_size > 1:
        torch.distributed.barrier()  # rank 0 has made the work directory
    try:
        return _train(a, lo, meta, desc, backend, work, say, started, provenance_args)
    finally:
        dev.shutdown()


def _train(
    a: TrainArgs,
    lo: LoraArgs,
    meta: D.DataMeta,
    desc: M.ModelDescription,
    backend: Any,
    work: Path,
    say: Callable[[str], None],
    started: float,
    provenance_args: dict[str, Any] | None,
) -> TrainResult:
    import torch
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from llmbuild.mcore import lora as ML

    rank0 = backend.rank == 0
    tdev = backend.torch_device
    t = build(a, lo, desc, backend)
    ddp, optimizer, scheduler, num_micro = t.ddp, t.optimizer, t.scheduler, t.num_micro
    say(
        f"loaded {a.input}; LoRA r={lo.rank} alpha={lo.alpha:g} on "
        f"{','.join(lo.target_modules)} ({t.wrapped} layers, {t.trainable:,} trainable "
        f"parameters on rank 0); training {a.train_iters} steps (global batch "
        f"{a.global_batch_size} = {num_micro} x micro {a.micro_batch_size} x dp {backend.dp}, "
        f"seq {a.seq_length})"
    )
    source = S.batch_source(a, meta, work, say)
    log_path = work / LOG_NAME
    forward_backward = get_forward_backward_func()
    dp_rank = parallel_state.get_data_parallel_rank()
    first_loss: float | None = None
    last_loss = float("nan")
    tokens_done = 0
    run_start = t_prev = time.time()
    ddp.train()
    for step in range(a.train_iters):
        base = step * a.global_batch_size + dp_rank * num_micro * a.micro_batch_size
        batches = [
            source.batch(base + m * a.micro_batch_size, a.micro_batch_size)
            for m in range(num_micro)
        ]
        step_tokens = sum(int((b["segments"] > 0).sum()) for b in batches)
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        reports = forward_backward(
            forward_step_func=partial(S.forward_step, tdev),
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
        counts = parallel_state.get_tensor_model_parallel_rank() == 0
        counts = counts and parallel_state.is_pipeline_first_stage()
        stats[2] = step_tokens if counts else 0
        if backend.world_size > 1:
            reduced = stats.to(tdev)
            torch.distributed.all_reduce(reduced)
            stats = reduced.cpu()
        loss = float(stats[0] / max(stats[1], 1.0))
        bad = non_finite(loss, None if grad_norm is None else float(grad_norm), bool(ok))
        if bad is not None:
            raise UserError(
                f"step {step + 1}: {bad}; LoRA training stopped (lower train.lora.lr, check the "
                "data); nothing saved"
            )
        tokens_done += int(stats[2])
        now = time.time()
        dt, t_prev = now - t_prev, now
        first_loss = loss if first_loss is None else first_loss
        last_loss = loss
        rec = StepRecord(
            step=step + 1,
            loss=loss,
            lr=lr_used,
            grad_norm=None if grad_norm is None else float(grad_norm),
            tokens=tokens_done,
            elapsed=round(now - run_start, 4),
            tokens_per_s=round(int(stats[2]) / max(dt, 1e-9), 2),
            tokens_per_s_per_device=round(int(stats[2]) / max(dt, 1e-9) / backend.world_size, 2),
            devices=backend.world_size,
            phase="lora",
        )
        if rank0:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(asdict(rec)) + "\n")
        if step == 0 or (step + 1) % a.log_interval == 0 or step + 1 == a.train_iters:
            rate = (step + 1) / max(now - run_start, 1e-9)
            eta = (a.train_iters - step - 1) / rate
            gn = "n/a" if grad_norm is None else f"{grad_norm:.3f}"
            say(
                f"step {step + 1}/{a.train_iters} loss {loss:.4f} lr {lr_used:.3g} "
                f"grad_norm {gn} | {rec.tokens_per_s:.0f} tok/s, {1 / rate:.2f} s/step, "
                f"ETA {eta:.0f}s" + ("" if ok else " (step skipped: inf/nan)")
            )
    elapsed = time.time() - run_start
    adapter = ML.gather_adapter(ddp.module)  # collective
    if rank0:
        assert adapter is not None
        _publish(a, lo, desc, work, adapter, elapsed, started, provenance_args or {})
    if backend.world_size > 1:
        torch.distributed.barrier()
    return TrainResult(
        steps=a.train_iters,
        resumed_from=0,
        final_loss=last_loss,
        first_loss=first_loss,
        tokens=tokens_done,
        elapsed=elapsed,
        seconds_per_step=elapsed / max(a.train_iters, 1),
    )


def write_adapter(out_dir: Path, lo: LoraArgs, tensors: dict[str, Any], trained: dict) -> None:
    """lora_config.json + adapter.safetensors (the layout convert/lora.py reads)."""
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(out_dir / LORA_WEIGHTS),
        metadata={"format": "pt"},
    )
    cfg = lo.config_json() | {"trained": trained}
    (out_dir / LORA_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")


def _publish(
    a: TrainArgs,
    lo: LoraArgs,
    desc: M.ModelDescription,
    work: Path,
    tensors: dict[str, Any],
    elapsed: float,
    started: float,
    provenance_args: dict[str, Any],
) -> None:
    """The adapter files and the log into ``work``, then ``work`` renamed to ``--output``."""
    from llmbuild import provenance
    from llmbuild.atomic import atomic_file

    want = desc.args.num_layers * len(lo.target_modules) * 2
    if len(tensors) != want:  # every stage's layers gathered, nothing twice
        raise UserError(f"gathered {len(tensors)} LoRA tensors, expected {want}", path=work)
    for key, t in tensors.items():
        if not bool(t.isfinite().all()):
            raise UserError(f"{key} is not finite; nothing saved", path=work)
    shutil.rmtree(work / "data_cache", ignore_errors=True)
    trained = {
        "from": str(a.input),
        "iterations": a.train_iters,
        "architecture": desc.args.architecture,
        "num_layers": desc.args.num_layers,
    }
    write_adapter(work, lo, tensors, trained)
    with atomic_file(a.train_log) as fh, open(work / LOG_NAME) as src:
        shutil.copyfileobj(src, fh)
    for artifact in (work, a.train_log):
        provenance.write(
            artifact,
            command="llmbuild train lora",
            args=provenance_args,
            inputs=[a.input, a.data],
            started=started,
            extra={"elapsed_training_s": round(elapsed, 3)},
        )
    out = Path(a.output)
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(work, out)
