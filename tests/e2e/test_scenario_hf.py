"""A user's own model end to end: the hf-qwen2.5 scenario (model.source: hf, a 152k vocabulary,
qkv bias, tied embeddings, GQA, the real ChatML tokenizer and template) through tokenization,
a few training steps, conversion both ways with their parity gates, W8A8 quantization and its
accuracy gate, vLLM serving and a static benchmark, with config/scenarios/quick.yaml.

The model is a random-weight stand-in made by tests/families.py, as the scenario's README
says a user would make one; accuracy means nothing here, every gate still runs."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import hf_scenario
import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
NAME = hf_scenario.NAME
RESULTS = ROOT / "results" / NAME


def snakemake(*args: str, timeout: int = 3600):
    cmd = hf_scenario.snakemake_cmd(*args)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def build(hf_scenario_build):
    """The scenario's build (begun beside the default's when make test runs both)."""
    proc = hf_scenario_build.result()
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return proc


def test_tokenized_with_the_models_own_special_tokens(build):
    for kind in ("pretrain", "sft"):
        meta = json.loads((RESULTS / "shards" / kind / "meta.json").read_text())
        assert meta["eod_id"] == 151643 and meta["eod_token"] == "<|endoftext|>"
        assert meta["vocab_size"] >= 151643


def test_every_gate_passed(build):
    summary = json.loads((RESULTS / "gates/summary.json").read_text())
    statuses = {(v["gate"], v["subject"]): v["status"] for v in summary["verdicts"]}
    assert statuses and set(statuses.values()) == {"pass"}, statuses
    gates = {g for g, _ in statuses}
    assert {"parity", "train_loss", "quant_accuracy", "service_requests", "bench_validity"} <= gates
    for name in ("base-hf2mg", "sft-mg2hf"):
        parity = json.loads((RESULTS / "gates/parity" / f"{name}.json").read_text())
        scale = max(1.0, parity["figures"]["logits_max_abs"])
        assert parity["figure"] <= parity["threshold"] == pytest.approx(1e-5 * scale)


def test_served_and_benchmarked(build):
    for variant in ("sft", "sft-w8a8"):
        acc = json.loads((RESULTS / "eval" / variant / "accuracy.json").read_text())
        assert acc["failed_requests"] == 0 and acc["n"] == 20
        assert acc["served_dtype"] in ("float32", "bfloat16")
    # bench.variants: the quantized variant alone (tests/e2e/bench-quantized.yaml)
    assert not (RESULTS / "bench" / "sft").exists()
    with open(RESULTS / "bench" / "sft-w8a8" / "static.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(int(r["failures"]) == 0 for r in rows)
    assert all(math.isfinite(float(r["request_goodput"])) for r in rows)
    config = json.loads((RESULTS / "sft/quant/w8a8/config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"


def test_noop_rerun_does_nothing(build):
    proc = snakemake("-n", timeout=600)
    assert "Nothing to be done" in proc.stdout + proc.stderr
