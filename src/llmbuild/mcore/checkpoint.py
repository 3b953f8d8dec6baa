"""Megatron-LM's checkpoint layout on megatron.core.dist_checkpointing (torch_dist format).

    <root>/latest_checkpointed_iteration.txt   "<iteration>"
    <root>/iter_0000000/                       torch_dist shards, metadata.json, common.pt
    <root>/llmbuild_model.json                 the architecture (see model.py)

The state dict is nested as Megatron-LM nests it ({"model": ..., "optimizer": ...,
"opt_param_scheduler": ..., "iteration", "checkpoint_version": 3.0}); the sharded keys are
megatron-core's own, so a checkpoint written at any TP/PP loads at any other TP/PP.

Call these after ``device.init_backend`` (they are collective over all ranks).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError

TRACKER = "latest_checkpointed_iteration.txt"
CHECKPOINT_VERSION = 3.0


def iter_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def read_latest(root: str | Path) -> int | None:
    """The iteration the tracker names, or None if there is no tracker."""
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if text == "release":
        return 0
    try:
        return int(text)
    except ValueError as exc:
        raise UserError(f"unreadable iteration {text!r}", path=tracker) from exc


def latest_dir(root: str | Path) -> tuple[int, Path]:
    """(iteration, directory) of the latest checkpoint under ``root``; UserError if none."""
    root = Path(root)
    it = read_latest(root)
    if it is None:
        raise UserError(f"no {TRACKER}: not a Megatron checkpoint directory", path=root)
    d = root / iter_name(it)
    if not d.is_dir() and (root / "release").is_dir():
        d = root / "release"
    if not (d / "metadata.json").is_file():
        raise UserError(f"{d.name} is missing or incomplete (no metadata.json)", path=root)
    return it, d


def _is_rank0() -> bool:
    import torch

    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def _barrier() -> None:
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _save_strategy():
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    # One writer process per rank: fewer forks on small machines, one .distcp file per rank.
    return TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=1)


def save(
    root: str | Path,
    iteration: int,
    model: Any,
    *,
    optimizer: Any = None,
    scheduler: Any = None,
    common: dict[str, Any] | None = None,
) -> Path:
    """Write ``root/iter_<iteration>/`` and then the tracker (so a killed save is ignored)."""
    from megatron.core import dist_checkpointing

    root = Path(root)
    target = root / iter_name(iteration)
    if _is_rank0():
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
    _barrier()
    model_sd = model.sharded_state_dict()
    state: dict[str, Any] = {
        "model": model_sd,
        "iteration": iteration,
        "checkpoint_version": CHECKPOINT_VERSION,
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model_sd)
    if scheduler is not None:
        state["opt_param_scheduler"] = scheduler.state_dict()
    if common:
        state.update(common)
    dist_checkpointing.save(state, str(target), sharded_strategy=_save_strategy())
    _barrier()
    if _is_rank0():
        tmp = root / (TRACKER + ".tmp")
        tmp.write_text(f"{iteration}\n")
        tmp.replace(root / TRACKER)
    _barrier()
    return target


def load(
    root: str | Path,
    model: Any,
    *,
    optimizer: Any = None,
    scheduler: Any = None,
) -> tuple[int, dict[str, Any]]:
    """Load the latest checkpoint under ``root`` into ``model`` (and optimizer, scheduler).

    Returns (iteration, the non-tensor entries of the checkpoint).
    """
    from megatron.core import dist_checkpointing

    iteration, d = latest_dir(root)
    model_sd = model.sharded_state_dict()
    request: dict[str, Any] = {"model": model_sd}
    if optimizer is not None:
        request["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True)
    common = dist_checkpointing.load_common_state_dict(str(d))
    state = dist_checkpointing.load(request, str(d))
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise UserError(
            f"checkpoint does not match the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}",
            path=d,
        )
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        if "opt_param_scheduler" not in common:
            raise UserError("no optimizer scheduler state to resume from", path=d)
        scheduler.load_state_dict(common["opt_param_scheduler"])
    return iteration, {
        k: v for k, v in common.items() if k not in ("model", "optimizer", "opt_param_scheduler")
    }


def make_reproducible(target: str | Path) -> None:
    """Replace what torch draws at random in a saved ``iter_*`` directory, so the same training
    run writes the same bytes: DCP's ``storage_meta.save_id`` in ``.metadata`` (a uuid4; now one
    derived from the rest of the file, the same length, so the pickle stays valid) and
    ``torch.save``'s serialization id in ``common.pt`` (rewritten as ``torch.save`` writes it,
    the id derived from its name). Call on one rank, after the save."""
    import hashlib
    import uuid

    import torch

    from llmbuild.atomic import atomic_file
    from llmbuild.convert.formats import dcp_meta, torch_record

    target = Path(target)
    meta = target / ".metadata"
    if meta.is_file():
        save_id = getattr(dcp_meta.load(meta).storage_meta, "save_id", None)
        data = meta.read_bytes()
        old = save_id.encode() if isinstance(save_id, str) else b""
        if old and data.count(old) == 1:
            digest = hashlib.sha256(data.replace(old, b"")).hexdigest()
            new = str(uuid.uuid5(uuid.NAMESPACE_OID, digest)).encode()
            if len(new) == len(old):
                with atomic_file(meta, "wb") as fh:
                    fh.write(data.replace(old, new))
    common = target / "common.pt"
    if common.is_file():
        state = torch.load(common, map_location="cpu", weights_only=True)
        with atomic_file(common, "wb") as fh:
            torch_record.write_object(fh, state, name=f"{target.name}/common")
