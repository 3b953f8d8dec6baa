"""A non-finite loss (or applied gradient norm) stops training at once, naming the step: exit 2
with one line, nothing published, ``.partial`` marked stopped so a rerun starts over instead of
resuming into the diverged weights; under torchrun every rank stops; a normal run is
unaffected."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")
pytest.importorskip("transformers")

import synth  # noqa: E402
import tiny  # noqa: E402

pytestmark = pytest.mark.parity

ERROR = "llmbuild train run: error: "
FIX = "; training stopped (lower train.pretrain.lr, check the data); nothing saved, a rerun "


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)


def _llmbuild(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmbuild", *args]


def _train(root: Path, load: str, name: str, iters: int, lr: str, *extra: str) -> list[str]:
    return [
        "train",
        "run",
        "--mode",
        "pretrain",
        "--input",
        str(root / load),
        "--data",
        str(root / "pt"),
        "--output",
        str(root / name),
        "--train-log",
        str(root / f"{name}.jsonl"),
        "--train-iters",
        str(iters),
        "--lr",
        lr,
        "--min-lr",  # the schema's defaults (1e-4, 20) would not fit these few steps
        "0",
        "--warmup-iters",
        "0",
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "4",
        "--seq-length",
        "32",
        "--seed",
        "5",
        "--threads",
        "1",
        "--log-interval",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny model converted as it is and with one inf weight (the final norm), and data."""
    from llmbuild.convert import checkpointer as C

    root = tmp_path_factory.mktemp("nonfinite")
    spec = dict(arch="llama", layers=2, vocab_size=128, hidden=64, inter=128, heads=2, kv_heads=1)
    model = tiny.make_model(root / "hf", **spec)
    C.hf_to_megatron(root / "hf", root / "mg", tp=1, pp=1)
    with torch.no_grad():
        model.model.norm.weight[0] = float("inf")
    tiny.make_model(root / "hf-inf", **spec)  # tokenizer and configs
    model.save_pretrained(str(root / "hf-inf"), safe_serialization=True)
    C.hf_to_megatron(root / "hf-inf", root / "mg-inf", tp=1, pp=1)
    synth.make_pretrain(root / "pt", docs=60)
    return root


def _error(r: subprocess.CompletedProcess) -> str:
    """The error line: the last line of stderr, and no traceback before it."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(ERROR), r.stderr[-3000:]
    return line[len(ERROR) :]


def _partial(root: Path, name: str) -> Path:
    return root / f"{name}.partial"


def test_nan_loss_stops_at_step_1(work):
    r = _run(_llmbuild(*_train(work, "mg-inf", "inf", 4, "1e-3")))
    msg = _error(r)
    assert msg == f"step 1: loss is nan{FIX}starts over from {work / 'mg-inf'}"
    assert not (work / "inf").exists() and not (work / "inf.jsonl").exists()
    stopped = json.loads((_partial(work, "inf") / "llmbuild_stopped.json").read_text())
    assert stopped == {"step": 1, "reason": "step 1: loss is nan"}
    assert not list(_partial(work, "inf").glob("iter_*"))
    assert not (_partial(work, "inf") / "train_log.jsonl").exists()  # no step was logged


def test_divergence_stops_at_its_step_and_a_rerun_starts_over(work):
    """A huge learning rate: finite steps first (logged, checkpointed every step), then the
    step whose loss or gradient norm is not finite stops the run."""
    args = _train(work, "mg", "huge", 8, "1e4", "--save-interval", "1")
    r = _run(_llmbuild(*args))
    msg = _error(r)
    m = re.fullmatch(
        rf"step (\d+): (loss is (nan|inf)|gradient norm is (nan|inf) \(loss [0-9.]+\))"
        rf"{re.escape(FIX)}starts over from {re.escape(str(work / 'mg'))}",
        msg,
    )
    assert m, msg
    step = int(m.group(1))
    assert step >= 2
    partial = _partial(work, "huge")
    log = [json.loads(x) for x in (partial / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == list(range(1, step))  # the stopping step is not logged
    assert all(math.isfinite(x["loss"]) for x in log)
    assert f"step {step - 1}/8 loss" in r.stderr and f"step {step}/8" not in r.stderr
    # the last checkpoint is the step before; nothing was saved after, nothing published
    assert (partial / "latest_checkpointed_iteration.txt").read_text().strip() == str(step - 1)
    assert not (work / "huge").exists() and not (work / "huge.jsonl").exists()

    # the same run again: not resumed from the diverged checkpoints; stops at the same step
    r2 = _run(_llmbuild(*args))
    assert f"discarding {partial} (it stopped at step {step}: " in r2.stderr
    assert "resuming" not in r2.stderr
    assert _error(r2) == msg


@pytest.mark.slow  # one process stops the same way: the tests above
def test_torchrun_every_rank_stops(work):
    """Two pipeline stages: the first stage computes no loss itself; the all-reduced NaN
    stops it as well as the last stage (no rank waits for a collective: the run ends)."""
    exe = Path(sys.executable).parent / "torchrun"
    launcher = [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", "--nproc_per_node", "2", "-m", "llmbuild"]
    r = _run([*cmd, *_train(work, "mg-inf", "inf-pp", 4, "1e-3", "--pp", "2")])
    assert r.returncode != 0
    errors = [x for x in r.stderr.splitlines() if x.startswith(ERROR)]
    assert len(errors) == 2, r.stderr[-3000:]  # one per rank
    assert all(
        e == f"{ERROR}step 1: loss is nan{FIX}starts over from {work / 'mg-inf'}" for e in errors
    )
    assert not (work / "inf-pp").exists()
    assert (_partial(work, "inf-pp") / "llmbuild_stopped.json").is_file()


@pytest.mark.slow  # normal runs: every training test
def test_a_normal_run_is_unaffected(work):
    r = _run(_llmbuild(*_train(work, "mg", "ok", 3, "3e-3", "--save-interval", "1")))
    assert r.returncode == 0, r.stderr[-3000:]
    log = [json.loads(x) for x in (work / "ok.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3]
    assert all(math.isfinite(x["loss"]) and math.isfinite(x["grad_norm"]) for x in log)
    assert (work / "ok" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert not (work / "ok" / "llmbuild_stopped.json").exists()
    assert not _partial(work, "ok").exists()


def test_non_finite():
    from llmbuild.train.loop import non_finite

    assert non_finite(2.5, 1.0, True) is None
    assert non_finite(2.5, None, True) is None
    assert non_finite(float("nan"), 1.0, True) == "loss is nan"
    assert non_finite(float("inf"), None, False) == "loss is inf"
    assert non_finite(2.5, float("nan"), True) == "gradient norm is nan (loss 2.5000)"
    # a step the optimizer skipped (fp16 loss scaling) did not touch the weights
    assert non_finite(2.5, float("inf"), False) is None
