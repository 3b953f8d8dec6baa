"""Every quantization scheme vLLM's CPU build serves, on the trained tiny model, through its
accuracy gate (tests/quantize/configs/cpu-schemes.yaml over the embedded default).

Reuses the default build (test_demo's, or made now): only the quantize jobs of the extra
schemes, their services, their evaluations and their gates run; the SmoothQuant scale file is
the default build's, reused by w8a8. What each scheme's quantization writes is tested in the
quantize environment (tests/quantize); this proves each variant is served and keeps the SFT
model's accuracy (gates.quant_max_drop).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

# green over a whole build (`make test-pending`, this stop); each scheme's files are tested in
# tests/quantize and W8A8 through the default graph (in make test): make test-full runs it
pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from llmbuild.quantize import schemes  # noqa: E402

MODEL = ROOT / "results/tiny-llama"
CONFIGS = ["config/config.yaml", "tests/quantize/configs/cpu-schemes.yaml"]
SCHEMES = schemes.servable("serve-cpu", "cpu")


@pytest.fixture(scope="module")
def gated():
    targets = [f"results/tiny-llama/gates/quant/sft-{s}.json" for s in SCHEMES]
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/local"]
    cmd += ["--configfile", *CONFIGS, "--", *targets]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    print(
        f"quantize + serve + evaluate + gate of {len(SCHEMES)} schemes: "
        f"{time.perf_counter() - started:.0f} s"
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return proc


def test_config_lists_every_scheme_the_cpu_stack_serves():
    import yaml

    cfg = yaml.safe_load((ROOT / CONFIGS[1]).read_text())
    assert cfg["quantize"]["schemes"] == SCHEMES


def test_every_cpu_scheme_passes_its_accuracy_gate(gated):
    sft = json.loads((MODEL / "eval/sft/accuracy.json").read_text())
    assert sft["accuracy"] >= 0.9  # a model that solves its task, so a drop would show
    rows = []
    for s in SCHEMES:
        verdict = json.loads((MODEL / f"gates/quant/sft-{s}.json").read_text())
        acc = json.loads((MODEL / f"eval/sft-{s}/accuracy.json").read_text())
        out = MODEL / "sft/quant" / s
        size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
        rows.append(f"{s:12} {size / 1e6:6.2f} MB  accuracy {acc['accuracy']:.3f}")
        assert verdict["status"] == "pass", verdict
        assert acc["n"] == sft["n"] and acc["failed_requests"] == 0
        assert sft["accuracy"] - acc["accuracy"] <= 0.05
        qc = json.loads((out / "config.json").read_text())["quantization_config"]
        assert qc["quant_method"] == "compressed-tensors"
        prov = json.loads((out / "provenance.json").read_text())["quantization"]
        assert prov["smoothed_layers"] == (8 if s == "w8a8" else 0)
    print("\n".join(rows))


@pytest.mark.parametrize(
    ("scheme", "said"),
    [
        ("w8a16", "Failed to find a kernel that can implement the WNA16 linear layer"),
        ("kv-int8", "Currently supported kv cache quantization is num_bits=8, type=float"),
    ],
)
def test_the_cpu_stack_still_refuses_what_planning_refuses(tmp_path, scheme, said):
    """The record in CANNOT_SERVE is vLLM's answer now: quantize the SFT model (made by the
    default build) with the scheme and start a server on it; when a vLLM upgrade serves it,
    this fails and the record (and the test config) must follow."""
    assert scheme in schemes.CANNOT_SERVE[("serve-cpu", "cpu")]
    sft = MODEL / "sft/hf"
    if not (sft / "config.json").is_file():
        pytest.skip("no SFT model: run test_demo (or the default graph) first")
    out = tmp_path / scheme
    quant = [str(ROOT / ".envs/quantize/bin/llmbuild"), "quantize", "run", "--scheme", scheme]
    quant += ["--input", str(sft), "--output", str(out)]
    if scheme == "kv-int8":
        quant += ["--calib", str(MODEL / "data/task/train.jsonl"), "--num-samples", "8"]
    subprocess.run(quant, check=True, capture_output=True, timeout=900)
    serve = [str(ROOT / ".envs/serve-cpu/bin/llmbuild"), "serve", "run", "--input", str(out)]
    serve += ["--endpoint", str(tmp_path / "ep.json"), "--max-model-len", "256"]
    serve += ["--kv-cache-space-gib", "0.25", "--enforce-eager", "--ready-timeout", "600"]
    proc = subprocess.run(serve, capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert said in proc.stdout + proc.stderr
