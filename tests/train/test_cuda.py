"""Training with `train.device: cuda` (`make test-gpu`, on a machine with an NVIDIA GPU): the
same command as on CPU with `--device cuda` follows the CPU run's loss curve, writes a
checkpoint that converts to HF like a CPU one, and with two GPUs trains tensor-parallel under
torchrun with the one-GPU losses. Skipped where torch sees no CUDA device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")
pytest.importorskip("transformers")

import synth  # noqa: E402
import test_parallel as P  # noqa: E402  (its launchers: llmbuild, torchrun, run)
import tiny  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device"),
]

ITERS = 12


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    tiny.make_model(root / "hf", arch="llama", layers=2, vocab_size=128, hidden=64, inter=128)
    args = ("--input", str(root / "hf"), "--output", str(root / "mg"))
    r = P._run(P._llmbuild("convert", "hf2mg", *args))
    assert r.returncode == 0, r.stderr[-2000:]
    synth.make_pretrain(root / "pt")
    return root


def _train(root: Path, name: str, device: str, *extra: str) -> list[str]:
    return [
        *("train", "run", "--mode", "pretrain", "--input", str(root / "mg")),
        *("--data", str(root / "pt"), "--output", str(root / name)),
        *("--train-log", str(root / f"{name}.jsonl"), "--train-iters", str(ITERS)),
        *("--lr", "3e-3", "--min-lr", "3e-4", "--warmup-iters", "2", "--seed", "5"),
        *("--micro-batch-size", "4", "--global-batch-size", "8", "--seq-length", "64"),
        *("--device", device, "--save-interval", "0", *extra),
    ]  # fmt: skip


def _losses(root: Path, name: str) -> list[float]:
    return P._losses(root / f"{name}.jsonl")


@pytest.fixture(scope="module")
def cpu_losses(work):
    r = P._run(P._llmbuild(*_train(work, "cpu", "cpu", "--threads", "2")))
    assert r.returncode == 0, r.stderr[-3000:]
    return _losses(work, "cpu")


def test_cuda_training_follows_the_cpu_run_and_converts(work, cpu_losses):
    r = P._run(P._llmbuild(*_train(work, "gpu", "cuda")))
    assert r.returncode == 0, r.stderr[-3000:]
    log = [json.loads(x) for x in (work / "gpu.jsonl").read_text().splitlines()]
    assert [x["devices"] for x in log] == [1] * ITERS
    assert _losses(work, "gpu") == pytest.approx(cpu_losses, rel=2e-3)
    out = work / "gpu-hf"
    args = ("--input", str(work / "gpu"), "--hf-source", str(work / "hf"), "--output", str(out))
    r = P._run(P._llmbuild("convert", "mg2hf", *args))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model.safetensors").is_file() or (out / "model.safetensors.index.json").is_file()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensor_parallel_on_two_gpus_keeps_the_losses(work, cpu_losses):
    r = P._run(P._torchrun(2, *_train(work, "tp2", "cuda", "--tp", "2")))
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(work, "tp2") == pytest.approx(cpu_losses, rel=5e-3)
