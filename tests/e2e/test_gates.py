"""The graph stops, loudly, when a proof fails: run on a copy of the default build.

- a service that dies at its first request fails its consumer, and the graph, with one line
  naming the variant and quoting the server log's root cause, and no finished-looking output;
- a quantized model with a zeroed layer fails the quantization accuracy gate through a real
  vLLM service, with both accuracies in the line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MODEL = "results/tiny-llama"


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: int = 3600):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    cmd += ["--profile", str(ROOT / "profiles/local"), *args]
    if workdir != ROOT:
        # the environment rule's parameter is the path to src/ from the working directory,
        # which differs in the copy; the environments themselves are the same
        cmd += ["--rerun-triggers", "mtime", "input", "code"]
    return subprocess.run(
        cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def built():
    """The default build in the repository (made by test_demo, or now)."""
    proc = snakemake(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return ROOT


@pytest.fixture
def copy(built, tmp_path):
    """A copy of the default's build (its results, Snakemake's records, config) using the
    same .envs. Another model's build may be running in the repository meanwhile (the hf
    scenario's, tests/e2e/hf_scenario.py): its results are not copied, and a record of it
    that is replaced while the records are copied is skipped (the copy's graph reads none)."""
    wd = tmp_path / "wd"
    wd.mkdir()
    for rel in ("config", "envs", MODEL):
        shutil.copytree(built / rel, wd / rel, symlinks=True)
    shutil.copytree(
        built / ".snakemake/metadata", wd / ".snakemake/metadata", copy_function=_copy_if_there
    )
    (wd / ".envs").symlink_to(built / ".envs")
    (wd / "src").symlink_to(built / "src")  # the rules' source inputs read as in the build
    proc = snakemake(wd, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    return wd


def _copy_if_there(src: str, dst: str) -> None:
    try:
        shutil.copy2(src, dst)
    except FileNotFoundError:
        pass


def error_lines(proc) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ": error: " in ln]


def test_dead_service_fails_the_graph_with_its_root_cause(copy):
    env = dict(os.environ, PYTHONPATH=str(HERE / "fake_vllm"))
    target = f"{MODEL}/eval/sft/accuracy.json"
    proc = snakemake(copy, target, "--forcerun", "eval_accuracy", env=env, timeout=600)
    assert proc.returncode != 0
    lines = [ln for ln in error_lines(proc) if "service gate failed" in ln]
    assert lines, proc.stdout[-4000:] + proc.stderr[-4000:]
    line = lines[0]
    assert "sft: service gate failed in eval accuracy" in line
    assert "RuntimeError: int8_scaled_mm_with_quant: expect A to be bfloat16 or half" in line
    # nothing that looks finished; the records are kept under logs/ for diagnosis
    assert not (copy / target).exists()
    assert not (copy / f"{MODEL}/gates/requests/sft-eval.json").exists()
    kept = copy / "logs/tiny-llama/eval/sft/failed/records.jsonl"
    assert kept.is_file() and kept.read_text().strip()


ZERO_LAYERS = """
import sys
from pathlib import Path
from safetensors import safe_open
from safetensors.numpy import save_file

model_dir, layers = Path(sys.argv[1]), sys.argv[2:]
for path in sorted(model_dir.glob("*.safetensors")):
    with safe_open(str(path), "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    for key, t in tensors.items():
        parts = key.split(".")
        if key.startswith("model.layers.") and parts[2] in layers and "norm" not in key:
            if key.endswith(".weight"):
                tensors[key] = t * 0
                print(key)
    save_file(tensors, str(path), metadata=meta)
"""


def _zero_decoder_layers(model_dir: Path, *layers: int) -> list[str]:
    """Zero every weight of some decoder layers of a compressed-tensors model (in the train
    stack's interpreter, which has safetensors and numpy)."""
    python = ROOT / ".envs/train/bin/python"
    args = [str(python), "-c", ZERO_LAYERS, str(model_dir), *map(str, layers)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True)
    return proc.stdout.split()


def test_zeroed_layer_trips_the_quantization_gate(copy):
    quant = copy / f"{MODEL}/sft/quant/w8a8"
    assert _zero_decoder_layers(quant, 1)
    # a change made behind the graph's back: evaluate the variant again (its service starts
    # on the changed directory), and the gate judges the new figure
    evaluated = f"{MODEL}/eval/sft-w8a8/accuracy.json"
    gate = f"{MODEL}/gates/quant/sft-w8a8.json"
    proc = snakemake(copy, gate, "--forcerun", evaluated, timeout=1800)
    assert proc.returncode != 0, proc.stdout[-3000:]
    lines = [ln for ln in error_lines(proc) if "quant_accuracy gate fail for sft-w8a8" in ln]
    assert lines, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "accuracy drop" in lines[0] and "(threshold 0.05)" in lines[0]
    evaluated = json.loads((copy / evaluated).read_text())
    reference = json.loads((copy / f"{MODEL}/eval/sft/accuracy.json").read_text())
    assert reference["accuracy"] - evaluated["accuracy"] > 0.05
    assert not (copy / gate).exists()
