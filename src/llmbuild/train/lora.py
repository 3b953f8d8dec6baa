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
from pathlib import Path
from typing import Any

from llmbuild.convert.lora import LORA_CONFIG, LORA_WEIGHTS
from llmbuild.errors import UserError
from llmbuild.mcore import checkpoint as ckpt
from llmbuild.mcore import model as M
from llmbuild.train import data as D
from llmbuild.train import setup as S
from llmbuild.train.loop import Progress, TrainResult, steps
from llmbuild.train.resume import (
    TrainArgs,
    finish,
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


def build(
    a: TrainArgs, lo: LoraArgs, desc: M.ModelDescription, backend: Any
) -> tuple[S.Trainer, int, int]:
    """SFT's trainer (train/setup.py) over the frozen base from --input with its adapters:
    (trainer, linear layers with an adapter, trainable parameters) on this rank."""
    from llmbuild.mcore import lora as ML

    counts: list[int] = []

    def adapt(model: Any) -> None:
        ckpt.load(a.input, model)  # the base weights, before the adapters change the module tree
        counts.append(
            ML.inject(
                model,
                r=lo.rank,
                alpha=lo.alpha,
                dropout=lo.dropout,
                targets=lo.target_modules,
                seed=a.seed,
            )
        )
        counts.append(sum(p.numel() for p in model.parameters() if p.requires_grad))

    t = S.build(a, desc, backend, adapt=adapt)
    return t, counts[0], counts[1]


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

    from llmbuild.mcore import lora as ML

    rank0 = backend.rank == 0
    t, wrapped, trainable = build(a, lo, desc, backend)
    say(
        f"loaded {a.input}; LoRA r={lo.rank} alpha={lo.alpha:g} on "
        f"{','.join(lo.target_modules)} ({wrapped} layers, {trainable:,} trainable "
        f"parameters on rank 0); training {a.train_iters} steps (global batch "
        f"{a.global_batch_size} = {t.num_micro} x micro {a.micro_batch_size} x dp {backend.dp}, "
        f"seq {a.seq_length})"
    )
    source = S.batch_source(a, meta, work, say)
    p = Progress()
    steps(a, t, source, backend, work, say, p, phase="lora")
    elapsed = p.elapsed()
    adapter = ML.gather_adapter(t.ddp.module)  # collective
    if rank0:
        assert adapter is not None
        _publish(a, lo, desc, work, adapter, elapsed, started, provenance_args or {})
    if backend.world_size > 1:
        torch.distributed.barrier()
    return TrainResult(
        steps=a.train_iters,
        resumed_from=0,
        final_loss=p.last_loss,
        first_loss=p.first_loss,
        tokens=p.tokens,
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
    finish(a, work, "llmbuild train lora", elapsed, started, provenance_args)
