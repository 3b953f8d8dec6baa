"""The quantization branch of the graph, dry-run: one scale file for the schemes that smooth,
each scheme with exactly the inputs and flags it uses, another build's scale file reused, and
the CPU-scheme test config planned with a variant, a gate and a benchmark per scheme."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import snakefork

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from llmbuild.quantize import schemes  # noqa: E402
from llmbuild.quantize.scales import FORMAT  # noqa: E402

ALL = ["w8a8", "w8a16", "w4a16-gptq", "w4a16-awq", "kv-fp8", "kv-int8"]
SCALES = "results/tiny-llama/sft/quant/scales/smoothquant.safetensors"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("quant")
    shutil.copytree(ROOT / "config", wd / "config")
    shutil.copytree(ROOT / "envs", wd / "envs")
    shutil.copytree(ROOT / "tests/quantize/configs", wd / "tests/quantize/configs")
    meta = json.dumps({"__metadata__": {"format": FORMAT, "smoothing_strength": "0.5"}})
    other = wd / "other/scales.safetensors"
    other.parent.mkdir()
    other.write_bytes(len(meta).to_bytes(8, "little") + meta.encode())
    return wd


def plan(workdir: Path, *configs: str, extra: dict | None = None, targets=()):
    files = ["config/config.yaml", *configs]
    if extra is not None:
        (workdir / "extra.yaml").write_text(json.dumps(extra))
        files.append("extra.yaml")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    cmd += ["-n", "-p", "--forceall", "--cores", "2", "--configfile", *files, *targets]
    return snakefork.run(cmd, capture_output=True, text=True, timeout=300, cwd=workdir)


def commands(proc, verb: str) -> list[str]:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [
        ln.removeprefix("Shell command: ")
        for ln in proc.stdout.splitlines()
        if ln.startswith("Shell command: ") and f" {verb} " in ln
    ]


def by_scheme(cmds: list[str]) -> dict[str, str]:
    return {c.split("--scheme ")[1].split()[0]: c for c in cmds}


def test_each_scheme_reads_what_it_uses(workdir):
    servable = [s for s in ALL if s in schemes.servable("serve-cpu", "cpu")]
    proc = plan(workdir, extra={"quantize": {"schemes": servable}})
    (scales,) = commands(proc, "quantize scales")  # once, for every scheme that smooths
    assert f"--output {SCALES}" in scales and "--smoothing-strength 0.5" in scales
    assert "--calib results/tiny-llama/data/task/train.jsonl " in scales
    assert "--num-samples 64 --seq-length 128 --seed 0" in scales
    runs = by_scheme(commands(proc, "quantize run"))
    assert sorted(runs) == sorted(servable)
    for name, cmd in runs.items():
        s = schemes.SCHEMES[name]
        assert (f"--scale-input {SCALES}" in cmd) == s.smoothing, cmd
        assert ("--calib " in cmd and "--num-samples 64 --seq-length 128" in cmd) == s.calibrates
        assert "--smoothing-strength" not in cmd, cmd  # weight-only: never smoothed
        assert f"--output results/tiny-llama/sft/quant/{name} " in cmd
    gates = commands(proc, "gates quantize")
    assert sorted(g.split("--subject ")[1].split()[0] for g in gates) == sorted(
        f"sft-{s}" for s in servable
    )


def test_another_builds_scale_file_is_reused(workdir):
    proc = plan(workdir, extra={"quantize": {"scale_input": "other/scales.safetensors"}})
    assert commands(proc, "quantize scales") == []
    (w8a8,) = commands(proc, "quantize run")
    assert "--scale-input other/scales.safetensors" in w8a8


def test_calibration_file_from_config(workdir):
    calib = workdir / "other/calib.jsonl"
    calib.write_text('{"text": "hello"}\n')
    extra = {"quantize": {"calib": "other/calib.jsonl", "schemes": ["w8a8", "w4a16-awq"]}}
    proc = plan(workdir, extra=extra)
    (scales,) = commands(proc, "quantize scales")
    assert "--calib other/calib.jsonl" in scales
    assert "--calib other/calib.jsonl" in by_scheme(commands(proc, "quantize run"))["w4a16-awq"]


def test_cpu_scheme_config_plans_every_cpu_scheme(workdir):
    """tests/quantize/configs/cpu-schemes.yaml: every scheme vLLM's CPU build serves, each
    with its variant, accuracy gate and static benchmark."""
    proc = plan(workdir, "tests/quantize/configs/cpu-schemes.yaml")
    want = schemes.servable("serve-cpu", "cpu")
    assert sorted(by_scheme(commands(proc, "quantize run"))) == sorted(want)
    statics = " ".join(commands(proc, "bench static"))
    for s in want:
        assert f"results/tiny-llama/bench/sft-{s}/static.csv" in statics, s


@pytest.mark.parametrize("scheme", sorted(schemes.CANNOT_SERVE[("serve-cpu", "cpu")]))
def test_a_scheme_the_cpu_stack_cannot_serve_stops_planning(workdir, scheme):
    proc = plan(workdir, extra={"quantize": {"schemes": ["w8a8", scheme]}})
    assert proc.returncode != 0
    (line,) = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "error:" in ln]
    assert f"extra.yaml: quantize.schemes: {scheme} cannot be served by serve-cpu on cpu" in line
