"""A training run's identity and its work directory: resume (断点续训), stop, publish.

The run works in ``<output>.partial/`` (checkpoints every ``save_interval`` steps, the JSONL
log, the dataset index cache, ``llmbuild_train.json`` = the run's identity) and renames it to
``<output>`` at the end. A rerun whose identity (arguments that change the result, and the
fingerprints of --input and --data) matches an existing ``.partial/`` resumes from its latest
checkpoint; any other ``.partial/`` is discarded, and so is one marked stopped
(``llmbuild_stopped.json``, written when a non-finite loss stopped the run: its checkpoints
may already hold the diverged weights). Torch-free: nothing here imports torch or megatron.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError
from llmbuild.mcore import checkpoint as ckpt
from llmbuild.mcore import model as M
from llmbuild.parallel import check_split

MODES = ("pretrain", "sft", "dpo")
IDENTITY_FILE = "llmbuild_train.json"
STOPPED_FILE = "llmbuild_stopped.json"  # in .partial/: stopped on a non-finite loss
LOG_NAME = "train_log.jsonl"
# Arguments that do not change the trained weights (so a rerun may differ in them).
NOT_IDENTITY = (
    "input",
    "data",
    "output",
    "train_log",
    "save_interval",
    "log_interval",
    "threads",
    "device",
)


@dataclass
class TrainArgs:
    """`llmbuild train run`'s arguments (the field names are its flags'), checked.

    The defaults here are the neutral ones of a library call (no warmup, batch 1); the
    command's come from the config schema (train.<phase>.*)."""

    mode: str
    input: str
    data: str
    output: str
    train_log: str
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
    dp: int = 1
    pp_layers: tuple[int, ...] | None = None  # uneven pipeline split: layers per stage
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    beta: float = 0.1  # DPO: the strength of the KL anchor to the reference model
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
            ("--dp", self.dp),
            ("--log-interval", self.log_interval),
        ):
            if v < 1:
                raise bad(flag, f"must be >= 1, got {v}")
        if self.pp_layers is not None:
            # the model's layer count is checked against the split once it is read
            self.pp_layers = tuple(check_split(None, self.pp, self.pp_layers))
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
        if not self.beta > 0:
            raise bad("--beta", f"must be > 0, got {self.beta}")
        if self.mode == "dpo" and self.pp > 1:
            raise bad(
                "--pp", "DPO trains with pp 1 (tp and dp work); set train.pp: 1 for a dpo phase"
            )
        if Path(self.output).resolve() == Path(self.input).resolve():
            raise bad("--output", "must differ from --input")

    def identity(self) -> dict[str, Any]:
        """The arguments that change the result, as JSON would store them (an even split
        leaves pp_layers out, so the identity of such runs is what it always was)."""
        out = {k: v for k, v in asdict(self).items() if k not in NOT_IDENTITY}
        if self.mode != "dpo":
            del out["beta"]  # read by DPO only
        if self.pp_layers is None:
            del out["pp_layers"]
        else:
            out["pp_layers"] = list(self.pp_layers)
        return out


def fingerprint(path: str | Path) -> str:
    """Cheap identity of an input directory: every file's relative path and size, plus the
    content of the small ones (metadata, indexes, configs). A checkpoint's training log is left
    out: its wall times would make the next phase's identity (and its bytes) differ between two
    otherwise identical builds."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if rel.startswith(".") or rel in ("provenance.json", LOG_NAME):
            continue
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\n".encode())
        if size <= 1 << 20:
            h.update(f.read_bytes())
    return h.hexdigest()


def run_identity(a: TrainArgs) -> dict[str, Any]:
    # "load" names --input's fingerprint as it always has, so older .partial/ still resume
    return {"args": a.identity(), "load": fingerprint(a.input), "data": fingerprint(a.data)}


def partial_dir(output: str | Path) -> Path:
    return Path(str(output).rstrip("/") + ".partial")


def prepare_work(a: TrainArgs, identity: dict[str, Any], say: Callable[[str], None]) -> bool:
    """Make ``<output>.partial``; True if it holds a resumable checkpoint of this same run."""
    work = partial_dir(a.output)
    ident_path = work / IDENTITY_FILE
    if work.is_dir():
        same = False
        try:
            same = json.loads(ident_path.read_text()) == identity
        except (OSError, json.JSONDecodeError):
            pass
        stopped = stopped_reason(work)
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


def stopped_reason(work: Path) -> str | None:
    """Why the run in ``work`` stopped ("step N: loss is nan"), or None if it did not."""
    path = work / STOPPED_FILE
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text())["reason"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return "a non-finite loss"


def mark_stopped(work: Path, step: int, reason: str) -> None:
    """Mark ``work`` stopped, so no rerun resumes from it (call on rank 0)."""
    (work / STOPPED_FILE).write_text(json.dumps({"step": step, "reason": reason}) + "\n")


def prune(work: Path, keep: int) -> None:
    """Every checkpoint in ``work`` but iteration ``keep``'s goes."""
    for d in work.glob("iter_*"):
        if d.name != ckpt.iter_name(keep):
            shutil.rmtree(d, ignore_errors=True)


def truncate_log(path: Path, step: int) -> None:
    """The log's records up to ``step`` (a resumed run rewrites the steps after it)."""
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


def publish(
    a: TrainArgs,
    desc: M.ModelDescription,
    work: Path,
    elapsed: float,
    started: float,
    provenance_args: dict[str, Any],
) -> None:
    """The log file, then ``<output>.partial`` renamed to ``<output>`` (rank 0)."""
    shutil.rmtree(work / "data_cache", ignore_errors=True)
    prune(work, a.train_iters)
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
            "trained": {"mode": a.mode, "iterations": a.train_iters, "from": str(a.input)},
        },
    )
    M.save_description(work, trained)
    finish(a, work, "llmbuild train run", elapsed, started, provenance_args)


def finish(
    a: TrainArgs,
    work: Path,
    command: str,
    elapsed: float,
    started: float,
    provenance_args: dict[str, Any],
) -> None:
    """The step log beside the output, provenance for both, then ``work`` renamed into
    ``--output`` (rank 0, after the outputs are in ``work``)."""
    from llmbuild import provenance
    from llmbuild.atomic import atomic_file

    with atomic_file(a.train_log) as fh, open(work / LOG_NAME) as src:
        shutil.copyfileobj(src, fh)
    for artifact in (work, a.train_log):
        provenance.write(
            artifact,
            command=command,
            args=provenance_args,
            inputs=[a.input, a.data],
            started=started,
            extra={"elapsed_training_s": round(elapsed, 3)},
        )
    out = Path(a.output)
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(work, out)
