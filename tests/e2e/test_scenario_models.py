"""Two models in one graph (models:), for real: the embedded default and a user's own Qwen2.5
(the hf scenario's stand-in, with quick.yaml and its benchmark choice as that entry's own
sections), and the comparison plots across them.

The graph of several models is the union of each model's one-model graph: after it, each
model's one-model config finds nothing to do, and the models' graph neither. In `make test`
the two one-model builds exist already (tests/e2e/test_demo.py, test_scenario_hf.py), so this
run makes only the comparison plots; alone, it builds both models from nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hf_scenario
import pytest
import yaml

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
HF_CONFIGS = hf_scenario.CONFIGS[1:]  # the scenario's overlays over config/config.yaml
MODELS_CONFIG = "results/e2e-models.yaml"
COMPARE = ROOT / "results/compare"


def _merged(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def models_config() -> dict:
    """The hf scenario's overlays as one models: entry beside the default's."""
    entry: dict = {}
    for path in HF_CONFIGS:
        entry = _merged(entry, yaml.safe_load((ROOT / path).read_text()))
    model = entry.pop("model")
    return {"models": [{"name": "tiny-llama"}, {**model, **entry}]}


def snakemake(*args: str, configs: list[str], timeout: int = 5400):
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/local"]
    cmd += [*args, "--configfile", "config/config.yaml", *configs]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def build(qwen25_stand_in, hf_scenario_build):
    hf_scenario_build.wait_if_started()
    (ROOT / MODELS_CONFIG).parent.mkdir(exist_ok=True)
    (ROOT / MODELS_CONFIG).write_text(json.dumps(models_config(), indent=1))
    proc = snakemake("-p", configs=[MODELS_CONFIG])
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return proc


def test_each_models_own_results(build):
    for name, variant in (("tiny-llama", "sft-w8a8"), ("qwen2.5-0.5b", "sft-w8a8")):
        summary = json.loads((ROOT / "results" / name / "gates/summary.json").read_text())
        assert {v["status"] for v in summary["verdicts"]} == {"pass"}
        assert (ROOT / "results" / name / "bench" / variant / "static.csv").is_file()
    # each model's own chain and data: the tiny model's vocabulary, Qwen's
    tiny = json.loads((ROOT / "results/tiny-llama/shards/sft/meta.json").read_text())
    qwen = json.loads((ROOT / "results/qwen2.5-0.5b/shards/sft/meta.json").read_text())
    assert tiny["vocab_size"] < 1000 < 151643 <= qwen["vocab_size"]


def test_comparison_plots_span_the_models(build):
    for kind in ("bench", "dynamic"):
        data = (COMPARE / f"{kind}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", kind
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 400 and height > 300 and len(data) > 10_000, (kind, width, height)
    # the bench picture holds every benchmarked variant of both models: its provenance
    # record names its inputs and their labels
    record = json.dumps(json.loads((COMPARE / "bench.png.provenance.json").read_text()))
    for name in (
        "results/tiny-llama/bench/sft/static.csv",
        "results/tiny-llama/bench/sft-w8a8/static.csv",
        "results/qwen2.5-0.5b/bench/sft-w8a8/static.csv",
        "tiny-llama/sft,tiny-llama/sft-w8a8,qwen2.5-0.5b/sft-w8a8",
    ):
        assert name in record, name


def test_the_models_graph_is_the_union_of_each_models_graph(build):
    for configs in ([], HF_CONFIGS, [MODELS_CONFIG]):
        proc = snakemake("-n", configs=configs, timeout=600)
        assert "Nothing to be done" in proc.stdout + proc.stderr, (configs, proc.stdout[-3000:])
