"""`llmbuild gates parity`: passes on good conversions (llama, qwen2 with tied embeddings, a
tp=2 pp=2 layout loaded at 1/1, a bf16 cast, mg2hf), trips on one corrupted tensor in the
converted artifact (hf2mg: the torch_dist record; mg2hf: the reconverted safetensors), skips
when off or when the model does not fit in memory, and turns bad inputs into one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")
pytest.importorskip("transformers")

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import tiny  # noqa: E402

pytestmark = pytest.mark.parity


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "llmbuild", "gates", "parity", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _gate(hf: Path, mcore: Path, direction: str, out: Path, *extra: str):
    r = _cli(
        "--hf",
        str(hf),
        "--mcore",
        str(mcore),
        "--direction",
        direction,
        "--output",
        str(out),
        "--threads",
        "2",
        *extra,
    )
    verdict = json.loads(out.read_text()) if out.is_file() else None
    return r, verdict


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny HF models and their conversions (the converter needs no torch: quick)."""
    from llmbuild.convert import checkpointer as C

    root = tmp_path_factory.mktemp("parity-gate")
    tiny.make_model(root / "llama" / "hf", arch="llama", layers=2)
    C.hf_to_megatron(root / "llama" / "hf", root / "llama" / "mcore", tp=1, pp=1)
    C.hf_to_megatron(root / "llama" / "hf", root / "llama-tp2pp2" / "mcore", tp=2, pp=2)
    C.hf_to_megatron(
        root / "llama" / "hf", root / "llama-bf16" / "mcore", tp=1, pp=1, dtype="bfloat16"
    )
    tiny.make_model(root / "qwen" / "hf", arch="qwen2", layers=2, vocab_size=500, tied=True)
    C.hf_to_megatron(root / "qwen" / "hf", root / "qwen" / "mcore", tp=1, pp=1)
    # mg2hf: the tp=2 pp=2 checkpoint converted back
    (root / "back").mkdir()
    C.megatron_to_hf(root / "llama-tp2pp2" / "mcore", root / "llama" / "hf", root / "back")
    return root


def _assert_pass(r: subprocess.CompletedProcess, v: dict | None) -> None:
    assert r.returncode == 0, r.stderr[-2000:]
    assert v is not None and v["status"] == "pass", v
    assert v["gate"] == "parity" and v["metric"] == "max |logit diff|"
    f = v["figures"]
    assert v["threshold"] == pytest.approx(1e-5 * max(1.0, f["logits_max_abs"]))
    assert 0 <= v["figure"] <= v["threshold"] and f["mean_abs_diff"] <= v["figure"]
    assert f["sequences"] == 4 and f["seq_length"] == 32
    assert f["compute_dtype"] == "float32" and f["argmax_agreement"] == 1.0
    assert r.stdout.splitlines()[-1].startswith("parity gate pass for ")
    assert r.stderr == ""  # progress and the verdict line go to stdout


def test_hf2mg_llama_passes(models, tmp_path):
    out = tmp_path / "v.json"
    r, v = _gate(models / "llama" / "hf", models / "llama" / "mcore", "hf2mg", out)
    _assert_pass(r, v)
    assert v["subject"] == "llama hf2mg"
    assert v["figures"]["dtype"] == "float32" and v["figures"]["architecture"] == "llama"
    prov = json.loads(Path(str(out) + ".provenance.json").read_text())
    assert prov["status"] == "pass" and prov["command"] == "llmbuild gates parity"


@pytest.mark.slow  # the tied family's parity: also in test_parity (torchrun, uneven split)
def test_hf2mg_qwen2_tied_passes(models, tmp_path):
    r, v = _gate(models / "qwen" / "hf", models / "qwen" / "mcore", "hf2mg", tmp_path / "v.json")
    _assert_pass(r, v)
    assert v["figures"]["architecture"] == "qwen2" and v["figures"]["vocab_size"] == 500


@pytest.mark.slow  # parallel layouts: test_parity (torchrun)
def test_hf2mg_tp2_pp2_layout_loads_at_1_1(models, tmp_path):
    mcore = models / "llama-tp2pp2" / "mcore"
    r, v = _gate(models / "llama" / "hf", mcore, "hf2mg", tmp_path / "v.json")
    _assert_pass(r, v)
    assert (v["figures"]["saved_tp"], v["figures"]["saved_pp"]) == (2, 2)


@pytest.mark.slow
def test_hf2mg_bf16_cast_compares_rounded_weights(models, tmp_path):
    """fp32 source, bf16 checkpoint: the HF side is rounded as the conversion rounded, both
    run in fp32, so the plain fp32 tolerance holds."""
    mcore = models / "llama-bf16" / "mcore"
    r, v = _gate(models / "llama" / "hf", mcore, "hf2mg", tmp_path / "v.json")
    _assert_pass(r, v)
    f = v["figures"]
    assert (f["dtype"], f["hf_dtype"], f["weights_dtype"]) == ("bfloat16", "float32", "bfloat16")


def test_mg2hf_passes(models, tmp_path):
    r, v = _gate(models / "back", models / "llama-tp2pp2" / "mcore", "mg2hf", tmp_path / "v.json")
    _assert_pass(r, v)
    assert v["subject"] == "llama-tp2pp2 mg2hf"


# --------------------------------------------------------------------------- corruption


def _corrupt_distcp(mcore: Path, fqn: str, index: tuple[int, ...], value: float) -> None:
    """Set one element of a stored tensor in the .distcp bytes (the record is uncompressed:
    find the element's row by its bytes, then write the new value in place)."""
    import numpy as np

    from llmbuild.convert.formats.torch_dist_reader import TorchDistReader

    it_dir = mcore / "iter_0000000"
    r = TorchDistReader(it_dir)
    shape, _ = r.tensors()[fqn]
    whole = np.array(r.read(fqn, (0,) * len(shape), shape))
    r.close()
    assert whole.dtype == np.float32
    row = whole[index[:-1]]
    col = index[-1]
    needle = row[: max(32, col + 1)].tobytes()
    hits = []
    for f in sorted(it_dir.glob("*.distcp")):
        data = f.read_bytes()
        at = data.find(needle)
        while at >= 0:
            hits.append((f, at))
            at = data.find(needle, at + 1)
    assert len(hits) == 1, hits
    f, at = hits[0]
    with open(f, "r+b") as fh:
        fh.seek(at + col * 4)
        fh.write(np.float32(value).tobytes())
    r = TorchDistReader(it_dir)
    assert float(r.read(fqn, (0,) * len(shape), shape)[index]) == value
    r.close()


def _assert_trips(r: subprocess.CompletedProcess, out: Path) -> None:
    assert r.returncode == 2, r.stderr[-2000:]
    assert not out.exists()  # a failed verdict writes nothing
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("llmbuild gates parity: error: parity gate fail for ")
    assert "max |logit diff|" in last and "(threshold 1e-05)" in last
    verdict = json.loads(r.stderr.strip().splitlines()[-2])  # the verdict JSON, for the log
    assert verdict["status"] == "fail" and verdict["figure"] > 100 * verdict["threshold"]


def test_hf2mg_trips_on_a_corrupted_converted_tensor(models, tmp_path):
    mcore = tmp_path / "bad" / "mcore"
    shutil.copytree(models / "llama" / "mcore", mcore)
    # one element of layer 1's down projection (fc2: [layers, hidden, ffn])
    _corrupt_distcp(mcore, "decoder.layers.mlp.linear_fc2.weight", (1, 5, 7), 2.0)
    out = tmp_path / "v.json"
    r, _ = _gate(models / "llama" / "hf", mcore, "hf2mg", out)
    _assert_trips(r, out)
    assert "the converted checkpoint is not the HF model" in r.stderr


def test_mg2hf_trips_on_a_corrupted_reconverted_tensor(models, tmp_path):
    from safetensors.torch import load_file, save_file

    hf = tmp_path / "back"
    shutil.copytree(models / "back", hf)
    (f,) = hf.glob("*.safetensors")
    tensors = load_file(str(f))
    tensors["model.layers.1.mlp.down_proj.weight"][5, 7] = 2.0
    save_file(tensors, str(f), metadata={"format": "pt"})
    out = tmp_path / "v.json"
    r, _ = _gate(hf, models / "llama-tp2pp2" / "mcore", "mg2hf", out)
    _assert_trips(r, out)
    assert "the reconverted HF model is not the checkpoint" in r.stderr


# --------------------------------------------------------------------------- skipped


def test_mode_off_is_skipped(models, tmp_path):
    out = tmp_path / "v.json"
    r, v = _gate(models / "llama" / "hf", models / "llama" / "mcore", "hf2mg", out, "--mode", "off")
    assert r.returncode == 0, r.stderr
    assert v["status"] == "skipped" and v["figure"] is None and "--mode off" in v["detail"]
    assert "parity gate skipped for llama hf2mg" in r.stdout


def test_auto_skips_when_memory_is_short(models, monkeypatch):
    from llmbuild.gates import parity
    from llmbuild.mcore import model as M

    monkeypatch.setattr(parity, "available_bytes", lambda: 512 << 20)
    v = parity.gate(models / "llama" / "hf", models / "llama" / "mcore", "hf2mg", mode="auto")
    assert v.status == "skipped" and v.figure is None
    assert "MemAvailable is 0.50 GiB" in v.detail and "--mode on" in v.detail
    assert v.figures["needed_bytes"] > v.figures["available_bytes"] == 512 << 20
    # what it needs: twice the fp32 parameters, the runtime, the logits
    params = parity.parameter_count(M.load_description(models / "llama" / "mcore").args)
    assert v.figures["parameter_bytes"] == 4 * params
    assert v.figures["needed_bytes"] == 8 * params + (1 << 30) + 4 * (4 * 32 * 512 * 4)
    monkeypatch.setattr(parity, "megatron_logits", _stub_logits)
    monkeypatch.setattr(parity, "hf_logits", _stub_logits)
    hf, mcore = models / "llama" / "hf", models / "llama" / "mcore"
    assert parity.gate(hf, mcore, "hf2mg", mode="on").status == "pass"  # on: runs regardless
    monkeypatch.setattr(parity, "available_bytes", lambda: 64 << 30)
    assert parity.gate(hf, mcore, "hf2mg", mode="auto").status == "pass"
    monkeypatch.setattr(parity, "available_bytes", lambda: None)  # unknown: runs
    assert parity.gate(hf, mcore, "hf2mg", mode="auto").status == "pass"


def _stub_logits(*args, **kwargs):
    return torch.zeros(4, 32, 512)


@pytest.mark.parametrize("direction", ["hf2mg", "mg2hf"])
def test_verdict_against_the_tolerance(models, monkeypatch, direction):
    """The judgement on given logits (the models stubbed): the source's scale sets the auto
    tolerance, an explicit one replaces it, non-finite logits fail."""
    from llmbuild.gates import parity

    source = torch.linspace(-3.0, 2.0, 4 * 32 * 512).reshape(4, 32, 512)  # max |logit| 3
    other = source.clone()
    src_fn, other_fn = ("hf_logits", "megatron_logits")
    if direction == "mg2hf":
        src_fn, other_fn = other_fn, src_fn
    monkeypatch.setattr(parity, src_fn, lambda *a, **k: source.clone())
    monkeypatch.setattr(parity, other_fn, lambda *a, **k: other.clone())
    hf, mcore = models / "llama" / "hf", models / "llama" / "mcore"

    other[1, 2, 3] += 2.9e-5  # under 1e-5 x 3
    v = parity.gate(hf, mcore, direction)
    assert v.status == "pass" and v.threshold == pytest.approx(3e-5)
    assert v.figure == pytest.approx(2.9e-5, rel=1e-2)
    assert v.figures["logits_max_abs"] == pytest.approx(3.0)
    other[1, 2, 3] += 0.2e-5
    v = parity.gate(hf, mcore, direction)
    assert v.status == "fail" and "mean |diff|" in v.detail
    assert parity.gate(hf, mcore, direction, tolerance=1e-4).status == "pass"
    assert parity.gate(hf, mcore, direction, tolerance=1e-6).threshold == 1e-6
    other[0, 0, 0] = float("nan")
    v = parity.gate(hf, mcore, direction)
    assert v.status == "fail" and "non-finite" in v.detail


def test_parameter_count_matches_the_models(models):
    from transformers import AutoModelForCausalLM

    from llmbuild.gates import parity
    from llmbuild.mcore import model as M

    for name, tied in (("llama", False), ("qwen", True)):
        desc = M.load_description(models / name / "mcore")
        hf = AutoModelForCausalLM.from_pretrained(str(models / name / "hf"))
        n = sum(p.numel() for p in hf.parameters())  # tied: counted once
        pad = (desc.args.padded_vocab_size - desc.args.vocab_size) * desc.args.hidden_size
        assert parity.parameter_count(desc.args) == n + pad * (1 if tied else 2), name


def test_available_bytes_reads_meminfo(tmp_path):
    from llmbuild.gates import parity

    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       32000000 kB\nMemAvailable:    2048 kB\n")
    assert parity.available_bytes(f) == 2048 * 1024
    f.write_text("MemTotal:       32000000 kB\n")
    assert parity.available_bytes(f) is None
    assert parity.available_bytes(tmp_path / "none") is None


def test_tolerances_by_compute_dtype():
    from llmbuild.gates import parity

    assert parity.tolerance_for("float32", 0.5) == 1e-5
    assert parity.tolerance_for("float32", 20.0) == pytest.approx(2e-4)
    assert parity.tolerance_for("bfloat16", 8.0) == 1.0
    assert parity.tolerance_for("float16", 1.0) == 2.0**-6
    assert parity.weights_dtype("float32", "float32") == "float32"
    assert parity.weights_dtype("bfloat16", "float32") == "bfloat16"
    assert parity.weights_dtype("float32", "bfloat16") == "bfloat16"
    assert parity.weights_dtype("bfloat16", "float16") == "bfloat16"


# --------------------------------------------------------------------------- bad inputs


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("llmbuild gates parity: error: ")
    return lines[0]


def test_bad_inputs_are_one_line(models, tmp_path):
    hf, mcore = models / "llama" / "hf", models / "llama" / "mcore"
    out = tmp_path / "v.json"
    line = _one_line_error(_gate(hf, tmp_path, "hf2mg", out)[0])
    assert "llmbuild_model.json" in line and str(tmp_path) in line
    line = _one_line_error(_gate(tmp_path / "nope", mcore, "hf2mg", out)[0])
    assert "not a directory" in line and "--hf" in line
    # a pair that is not one model: named field, both files
    line = _one_line_error(_gate(models / "qwen" / "hf", mcore, "hf2mg", out)[0])
    assert "config.json: architecture" in line and "not the same model" in line
    # an HF directory with a truncated shard
    bad_hf = tmp_path / "hf"
    shutil.copytree(hf, bad_hf)
    (f,) = bad_hf.glob("*.safetensors")
    f.write_bytes(f.read_bytes()[:-1000])
    _one_line_error(_gate(bad_hf, mcore, "hf2mg", out)[0])
    assert not out.exists()


def test_checkpoint_that_does_not_load_is_one_line(models, tmp_path):
    from llmbuild.convert.formats.torch_dist_reader import TorchDistReader

    mcore = tmp_path / "mcore"
    shutil.copytree(models / "llama" / "mcore", mcore)
    iter_dir = mcore / "iter_0000000"
    (f,) = iter_dir.glob("*.distcp")
    # every record's zip header overwritten: the files are whole, the records unreadable
    data = bytearray(f.read_bytes())
    for info in TorchDistReader(iter_dir).md.storage_data.values():
        data[info.offset : info.offset + 4] = b"\0\0\0\0"
    f.write_bytes(bytes(data))
    r, _ = _gate(models / "llama" / "hf", mcore, "hf2mg", tmp_path / "v.json")
    line = _one_line_error(r)
    assert "does not load into megatron-core" in line and str(mcore) in line
    # a file cut short: said before any model is built
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    line = _one_line_error(_gate(models / "llama" / "hf", mcore, "hf2mg", tmp_path / "v.json")[0])
    assert "is truncated" in line
