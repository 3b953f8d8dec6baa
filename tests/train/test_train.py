"""Training on tiny synthetic shards: the loss falls, the log has the contract's fields, the
output is a loadable checkpoint, and a killed run resumes to bit-identical weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")
pytest.importorskip("transformers")

import synth  # noqa: E402
import tiny  # noqa: E402

pytestmark = pytest.mark.parity

LOG_FIELDS = {
    "step",
    "loss",
    "lr",
    "grad_norm",
    "tokens",
    "elapsed",
    "tokens_per_s",
    "tokens_per_s_per_device",
    "devices",
    "phase",
}


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmbuild", *args]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONWARNINGS="ignore")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(*args), capture_output=True, text=True, env=_env(), timeout=600)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    tiny.make_model(
        root / "hf",
        arch="llama",
        layers=2,
        vocab_size=128,
        hidden=64,
        inter=128,
        heads=2,
        kv_heads=1,
    )
    r = _cli("convert", "hf2mg", "--input", str(root / "hf"), "--output", str(root / "mg"))
    assert r.returncode == 0, r.stderr[-2000:]
    synth.make_pretrain(root / "pt")
    synth.make_sft(root / "sft")
    return root


def _train_args(root: Path, mode: str, name: str, iters: int, **extra: str) -> list[str]:
    args = [
        "train",
        "run",
        "--mode",
        mode,
        "--input",
        str(root / "mg"),
        "--data",
        str(root / ("pt" if mode == "pretrain" else "sft")),
        "--output",
        str(root / name),
        "--train-log",
        str(root / f"{name}.jsonl"),
        "--train-iters",
        str(iters),
        "--lr",
        "3e-3",
        "--min-lr",
        "3e-4",
        "--warmup-iters",
        "2",
        "--micro-batch-size",
        "4",
        "--global-batch-size",
        "8",
        "--seq-length",
        "64",
        "--seed",
        "5",
        "--threads",
        "2",
        "--device",
        "cpu",
    ]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return args


def _log(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _weights(ckpt_dir: Path) -> dict:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    it = (ckpt_dir / "latest_checkpointed_iteration.txt").read_text().strip()
    out = ckpt_dir.parent / f".{ckpt_dir.name}-plain.pt"
    dcp_to_torch_save(str(ckpt_dir / f"iter_{int(it):07d}"), str(out))
    sd = torch.load(str(out), weights_only=False)
    out.unlink()
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("mode", ["pretrain", "sft"])
def test_training_reduces_loss(work, mode):
    iters = 12
    r = _cli(*_train_args(work, mode, f"out-{mode}", iters))
    assert r.returncode == 0, r.stderr[-3000:]
    log = _log(work / f"out-{mode}.jsonl")
    assert [x["step"] for x in log] == list(range(1, iters + 1))
    assert all(set(x) == LOG_FIELDS and x["phase"] == mode for x in log)
    assert all(b["tokens"] > a["tokens"] for a, b in zip(log, log[1:], strict=False))
    assert log[0]["lr"] == 0.0 and log[1]["lr"] == pytest.approx(1.5e-3)  # warmup from 0
    first = sum(x["loss"] for x in log[:2]) / 2
    last = sum(x["loss"] for x in log[-2:]) / 2
    assert last < first - 0.3, (first, last)
    out = work / f"out-{mode}"
    assert (out / "latest_checkpointed_iteration.txt").read_text().strip() == str(iters)
    assert (out / "llmbuild_model.json").is_file() and (out / "provenance.json").is_file()
    assert not Path(str(out) + ".partial").exists()
    assert "step 12/12" in r.stderr and "ETA" in r.stderr


def test_trained_checkpoint_converts_to_hf(work):
    out = work / "out-pretrain"
    if not out.is_dir():
        pytest.skip("needs test_training_reduces_loss[pretrain]")
    r = _cli(
        "convert",
        "mg2hf",
        "--input",
        str(out),
        "--hf-source",
        str(work / "hf"),
        "--output",
        str(work / "hf-trained"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    from safetensors.torch import load_file

    before = load_file(str(work / "hf" / "model.safetensors"))
    after = load_file(str(work / "hf-trained" / "model.safetensors"))
    assert set(before) == set(after)
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])


def test_the_same_run_writes_the_same_bytes(work):
    """A checkpoint is reproducible bit for bit: no wall time in its common state, no random
    ids (DCP's save id, torch.save's serialization id) in its files."""
    import hashlib
    import shutil

    def digests(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("provenance.json", "train_log.jsonl")
        }

    args = _train_args(work, "sft", "same", 4)
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    first = digests(work / "same")
    shutil.rmtree(work / "same")
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert digests(work / "same") == first
    assert any(k.endswith("common.pt") for k in first) and any(
        k.endswith(".metadata") for k in first
    )


def test_killed_run_resumes_to_identical_weights(work):
    iters, interval = 16, 2
    r = _cli(*_train_args(work, "pretrain", "whole", iters, save_interval=str(interval)))
    assert r.returncode == 0, r.stderr[-3000:]

    partial = work / "cut.partial"
    tracker = partial / "latest_checkpointed_iteration.txt"
    proc = subprocess.Popen(
        _cmd(*_train_args(work, "pretrain", "cut", iters, save_interval=str(interval))),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if tracker.is_file() and tracker.read_text().strip() not in ("", "0"):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial.is_dir() and not (work / "cut").exists(), "the run finished before the kill"

    r = _cli(*_train_args(work, "pretrain", "cut", iters, save_interval=str(interval)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stderr
    a, b = _weights(work / "whole"), _weights(work / "cut")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = _log(work / "whole.jsonl"), _log(work / "cut.jsonl")
    assert [x["step"] for x in lb] == list(range(1, iters + 1))
    assert [x["loss"] for x in la] == [x["loss"] for x in lb]


def test_changed_arguments_discard_partial(work):
    partial = work / "other.partial"
    partial.mkdir()
    (partial / "llmbuild_train.json").write_text("{}")
    (partial / "latest_checkpointed_iteration.txt").write_text("2\n")
    r = _cli(*_train_args(work, "sft", "other", 3))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "discarding" in r.stderr and "resuming" not in r.stderr
    assert (work / "other" / "iter_0000003").is_dir()


def test_wrong_dataset_kind_is_one_line(work):
    r = _cli(*_train_args(work, "sft", "bad", 3) + ["--data", str(work / "pt")])
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "pretrain dataset" in lines[0]
