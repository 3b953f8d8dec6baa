"""`llmbuild audit` on the real build of the embedded default (the one `make demo` makes, built
here when missing): it audits clean, names a flipped byte in a real shard, and its deterministic
steps rebuild bit-identical in a second directory (`--rebuild`).

Deterministic, compared byte for byte: synthetic corpus and task, the tiny model, both
tokenizations, hf2mg, pretraining and SFT (CPU, fixed seeds, one process, the same thread
count), mg2hf, W8A8 quantization and the benchmark dataset. Not compared (see
llmbuild/audit/rebuild.py): services, evaluation and benchmarks (answers and timings of a live
server), plots and summaries of those, environments (pip's work; their frozen lists are
audited instead).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SHARD = ROOT / "results/tiny-llama/shards/pretrain"


@pytest.fixture(scope="module")
def build():
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/local"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=5400)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]


def audit(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "llmbuild", "audit", "--json", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    return proc, time.perf_counter() - started


def test_finished_default_audits_clean(build):
    proc, seconds = audit()
    doc = json.loads(proc.stdout)
    print(f"audit of the finished default: {seconds:.1f} s, checked {doc['checked']}")
    assert proc.returncode == 0 and doc["ok"], doc["findings"]
    assert doc["checked"]["gates"] >= 12 and doc["checked"]["bytes"] >= 30
    # lineage of the bench plot reaches the synthetic corpus through the tiny model
    proc, _ = audit("--lineage", "results/tiny-llama/plots/bench.png")
    text = proc.stdout
    assert "results/tiny-llama/data/corpus.jsonl" in text and "model tiny" in text
    # a CSV row: its values, and the lineage of the run that wrote it back to the model
    row = "results/tiny-llama/bench/sft-w8a8/static.csv:1"
    proc, _ = audit("--row", row)
    doc = json.loads(proc.stdout)
    assert doc["rows"][row]["concurrency"] == "1"
    text = json.dumps(doc["lineage"])
    assert "results/tiny-llama/sft/quant/w8a8" in text and "serve run" in text


def test_flipped_byte_in_a_real_shard_is_named(build):
    shard = next(p for p in sorted(SHARD.iterdir()) if p.suffix == ".bin")
    data = bytearray(shard.read_bytes())
    original = bytes(data)
    data[len(data) // 2] ^= 0x01
    try:
        shard.write_bytes(bytes(data))
        proc, _ = audit()
    finally:
        shard.write_bytes(original)
    assert proc.returncode == 1
    hits = [(f["check"], f["artifact"], f["field"]) for f in json.loads(proc.stdout)["findings"]]
    assert ("bytes", "results/tiny-llama/shards/pretrain", shard.name) in hits, hits


# the deterministic steps up to training (make test; training's own bytes are compared run
# against run in tests/train/test_train.py), and all of them, trainings included (test-full)
UP_TO_TRAINING = (
    "results/tiny-llama/data/corpus.jsonl",
    "results/tiny-llama/base/hf",
    "results/tiny-llama/shards/pretrain",
    "results/tiny-llama/shards/sft",
    "results/tiny-llama/base/mcore",
)
TRAINED = (
    "results/tiny-llama/pretrain/mcore",
    "results/tiny-llama/sft/mcore",
    "results/tiny-llama/sft/hf",
    "results/tiny-llama/sft/quant/w8a8",
)


@pytest.mark.parametrize(
    "outputs",
    [UP_TO_TRAINING, pytest.param(UP_TO_TRAINING + TRAINED, marks=pytest.mark.slow)],
    ids=["up-to-training", "all"],
)
def test_deterministic_steps_rebuild_bit_identical(build, tmp_path, outputs):
    targets = [] if outputs[-1] in TRAINED else list(outputs)
    proc, seconds = audit("--rebuild", "--scratch", str(tmp_path / "second"), *targets)
    doc = json.loads(proc.stdout)
    print(
        f"rebuild of the deterministic steps: {seconds:.0f} s; identical: "
        f"{doc['rebuilt_identical']}"
    )
    assert [f for f in doc["findings"] if f["check"] == "rebuild"] == []
    same = set(doc["rebuilt_identical"])
    for out in outputs:
        assert out in same, out
