"""Bad input stops with one clear line naming the file and the field, and a non-zero exit."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parents[2]


def plan_with(tmp_path, overlay):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    (tmp_path / "bad.yaml").write_text(json.dumps(overlay))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(tmp_path),
        "-n",
        "--configfile",
        "config/config.yaml",
        "bad.yaml",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def error_lines(proc):
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if "error:" in ln]


def test_unknown_config_key(tmp_path):
    proc = plan_with(tmp_path, {"train": {"sft": {"learning_rate": 0.1}}})
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert line.startswith("llmbuild: error: bad.yaml: train.sft.learning_rate: unknown key;")


def test_unsupported_model_quantization_pair(tmp_path):
    proc = plan_with(
        tmp_path,
        {
            "model": {"name": "qwen2.5-7b", "source": "hf", "path": "m"},
            "quantize": {"schemes": ["w8a8"]},
        },
    )
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert "bad.yaml: quantize.schemes: model 'qwen2.5-7b' does not support w8a8" in line


@pytest.mark.parametrize(
    ("train", "says"),
    [
        ({"pp": 2, "pp_layers": [1, 2]}, "train.pp_layers: [1,2] sums to 3 but the model has 4"),
        ({"pp": 2, "pp_layers": [1, 1, 2]}, "train.pp_layers: [1,1,2] has 3 stages but train.pp"),
        ({"pp": 2, "pp_layers": [4, 0]}, "train.pp_layers.1: 0 is less than the minimum of 1"),
    ],
)
def test_bad_pipeline_split_stops_planning(tmp_path, train, says):
    proc = plan_with(tmp_path, {"train": train})
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert line.startswith("llmbuild: error: bad.yaml: ") and says in line
