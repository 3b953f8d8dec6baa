"""Records carry no secrets and no in-tree absolute paths; the package-source inputs of each
stage; the audit's pieces that need no graph."""

import json
import os
import sys

import pytest

from llmbuild import provenance
from llmbuild.audit import records as R
from llmbuild.audit.graph import parse_command
from llmbuild.sources import group_sources

pytestmark = pytest.mark.unit


def test_records_scrub_url_secrets_and_in_tree_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("data")
    art = tmp_path / "out.json"
    art.write_text("{}")
    provenance.write(
        art,
        command="x",
        args={
            "input": str(tmp_path / "in.txt"),
            "hf_token": "hf_abc",
            "base_url": "https://user:s3cret@example.com/v1?api_key=K123&x=1",
            "outside": "/opt/models/m",
        },
        inputs=[str(tmp_path / "in.txt")],
        started=0.0,
        extra={"endpoint": "http://a:b@127.0.0.1:8000/?token=T9"},
    )
    text = provenance.provenance_path(art).read_text()
    rec = json.loads(text)
    for secret in ("hf_abc", "s3cret", "K123", "T9", str(tmp_path)):
        assert secret not in text, secret
    assert rec["arguments"]["input"] == "in.txt" and list(rec["inputs"]) == ["in.txt"]
    assert rec["arguments"]["outside"] == "/opt/models/m"  # not in the tree: kept
    assert rec["arguments"]["base_url"].endswith("x=1")
    assert rec["source"]["llmbuild/provenance.py"] == provenance.file_digest(provenance.__file__)


def test_directory_records_list_their_files(tmp_path):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(b"a")
    (d / "sub" / "b.bin").write_bytes(b"b")
    provenance.write(d, command="x", args={}, started=0.0)
    rec = json.loads((d / "provenance.json").read_text())
    assert set(rec["output_files"]) == {"a.bin", "sub/b.bin"}
    assert (
        rec["output_digest"] == provenance.path_digest(d) == provenance.combine(rec["output_files"])
    )


def test_each_stage_depends_on_its_own_source_not_the_others():
    data, quantize = set(group_sources("data")), set(group_sources("quantize"))
    assert "llmbuild/data/tokenize.py" in data and "llmbuild/provenance.py" in data
    assert not any(p.startswith("llmbuild/quantize/") for p in data)
    assert "llmbuild/quantize/smoothquant.py" in quantize
    # the audit is not a stage's code: changing it reruns nothing
    assert not any(p.startswith("llmbuild/audit/") for p in data | quantize)


def test_commands_parse_as_llmbuild_parses_them():
    cmd = (
        ".envs/quantize/bin/llmbuild quantize smoothquant --input a --calib b --output c"
        " --scheme w8a8 --smoothing-strength 0.7 > log 2>&1"
    )
    args = parse_command(cmd)
    assert args["smoothing_strength"] == 0.7 and args["input"] == "a"
    assert parse_command("exec " + cmd)["scheme"] == "w8a8"
    assert parse_command("echo hello") is None


def test_config_keys_of_arguments():
    assert R.config_key("smoothing_strength", "quantize", []) == "quantize.smoothing_strength"
    out = ["results/m/sft/mcore"]
    assert R.config_key("lr", "train", out) == "train.sft.lr"
    assert R.config_key("output_len", "bench_static", []) == "bench.static.output_len"
    assert R.config_key("gate_mode", "bench_static", []) == "gates.mode"
    scales = ["results/m/sft/quant/scales/smoothquant.safetensors"]
    assert R.config_key("seq_length", "quantize_scales", scales) == "quantize.seq_length"


def test_pins_met_by_local_builds_and_env_packages_read(tmp_path):
    assert R.same_version("2.13.0", "2.13.0+cpu") and not R.same_version("2.13.0+cu1", "2.13.0")
    spec = tmp_path / "s.txt"
    spec.write_text("torch==2.13.0\nPyYAML==6.0.3 ; python_version>'3'\n# c\n")
    assert R.spec_pins(spec) == {"torch": "2.13.0", "pyyaml": "6.0.3"}
    here = R.env_packages(os.path.dirname(os.path.dirname(sys.executable)))
    assert here is None or "pytest" in here


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["audit", "--sample", "2"], "--sample 2.0: must be in (0, 1]"),
        (["audit", "--directory", "/nonexistent/build"], "no such build directory (--directory)"),
        (["why", "--directory", "/nonexistent/build"], "no such build directory (--directory)"),
    ],
)
def test_bad_audit_input_is_one_line(args, text):
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "llmbuild", *args], capture_output=True, text=True, timeout=60
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and text in lines[0], proc.stderr
