"""Bad input to hf2mg / mg2hf: one clear line on stderr, exit status 2, and no output at all
(no directory, no temporary sibling)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

pytestmark = pytest.mark.unit


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "llmbuild", "convert", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _no_output(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(f".{name}")] == []


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad") / "hf"
    tiny.make_model(d, arch="llama", layers=2, heads=4, kv_heads=2)
    return d


@pytest.fixture(scope="module")
def mg(hf) -> Path:
    out = hf.parent / "mg-tp2"
    r = _cli("hf2mg", "--input", str(hf), "--output", str(out), "--tp", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.mark.parametrize(
    ("tp", "pp", "words"),
    [
        ("3", "1", ("--tp", "tp=3 must divide num_attention_heads 4")),
        ("4", "1", ("--tp", "num_key_value_heads 2")),  # divides the heads, not the kv heads
        ("1", "3", ("--pp", "pp=3 is more than the model's 2 layers")),
    ],
)
def test_parallel_layout_that_does_not_fit(hf, tmp_path, tp, pp, words):
    r = _cli("hf2mg", "--input", str(hf), "--output", str(tmp_path / "mg"), "--tp", tp, "--pp", pp)
    _one_line_error(r, *words)
    _no_output(tmp_path, "mg")


def test_missing_shard(tmp_path):
    from transformers import AutoModelForCausalLM

    src = tmp_path / "hf"
    tiny.make_model(src, arch="llama", layers=2)
    AutoModelForCausalLM.from_pretrained(str(src)).save_pretrained(str(src), max_shard_size="300KB")
    (src / "model.safetensors").unlink(missing_ok=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    (src / shards[1]).unlink()
    r = _cli("hf2mg", "--input", str(src), "--output", str(tmp_path / "mg"))
    _one_line_error(r, shards[1], "missing")
    _no_output(tmp_path, "mg")


def test_truncated_shard(hf, tmp_path):
    src = tmp_path / "hf"
    shutil.copytree(hf, src)
    f = src / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    r = _cli("hf2mg", "--input", str(src), "--output", str(tmp_path / "mg"))
    _one_line_error(r, "model.safetensors", "truncated")
    _no_output(tmp_path, "mg")


def test_tensor_shape_disagreeing_with_config(hf, tmp_path):
    src = tmp_path / "hf"
    shutil.copytree(hf, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] = 256
    (src / "config.json").write_text(json.dumps(cfg))
    r = _cli("hf2mg", "--input", str(src), "--output", str(tmp_path / "mg"))
    _one_line_error(r, "gate_proj", "config.json implies [256, 128]")
    _no_output(tmp_path, "mg")


@pytest.mark.parametrize("missing", ["tokenizer.json", "tokenizer_config.json"])
def test_tokenizer_file_missing_from_source(hf, mg, tmp_path, missing):
    src = tmp_path / "src"
    shutil.copytree(hf, src)
    (src / missing).unlink()
    r = _cli("mg2hf", "--input", str(mg), "--hf-source", str(src), "--output", str(tmp_path / "o"))
    _one_line_error(r, "--hf-source", missing)
    _no_output(tmp_path, "o")


@pytest.mark.parametrize(("field", "value", "says"), [("tp", 1, "tp=1 pp=1"), ("pp", 2, "pp=2")])
def test_checkpoint_layout_disagreeing_with_its_metadata(hf, mg, tmp_path, field, value, says):
    bad = tmp_path / "mg"
    shutil.copytree(mg, bad)
    desc = json.loads((bad / "llmbuild_model.json").read_text())
    desc[field] = value
    (bad / "llmbuild_model.json").write_text(json.dumps(desc))
    r = _cli("mg2hf", "--input", str(bad), "--hf-source", str(hf), "--output", str(tmp_path / "o"))
    _one_line_error(r, "llmbuild_model.json", says, "written with tp=2 pp=1")
    _no_output(tmp_path, "o")


def test_truncated_checkpoint_file(hf, mg, tmp_path):
    bad = tmp_path / "mg"
    shutil.copytree(mg, bad)
    f = bad / "iter_0000000" / "__1_0.distcp"
    f.write_bytes(f.read_bytes()[:-500])
    r = _cli("mg2hf", "--input", str(bad), "--hf-source", str(hf), "--output", str(tmp_path / "o"))
    _one_line_error(r, "__1_0.distcp", "truncated")
    _no_output(tmp_path, "o")


def test_unknown_architecture_one_line(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(
        json.dumps({"architectures": ["FalconForCausalLM"], "model_type": "falcon"})
    )
    r = _cli("hf2mg", "--input", str(hf), "--output", str(tmp_path / "mg"))
    line = _one_line_error(r, "FalconForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM")
    assert "MistralForCausalLM" in line
    _no_output(tmp_path, "mg")
