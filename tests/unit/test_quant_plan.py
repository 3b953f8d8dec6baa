"""Planning refuses, in one line naming the key, what quantization cannot build or serve."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from llmbuild import catalog, plan
from llmbuild.errors import UserError
from llmbuild.quantize import scales, schemes

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "src/llmbuild/schema.yaml"
CATALOG = ROOT / "config/catalog.yaml"


def filled(overlay: dict) -> dict:
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for key, value in overlay.items():
        cfg.setdefault(key, {}).update(copy.deepcopy(value))
    validate(cfg, str(SCHEMA), set_default=True)
    return cfg


def refusal(cfg: dict) -> str:
    with pytest.raises(UserError) as exc:
        plan.check_plan(cfg, CATALOG, "c.yaml")
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def scale_file(path: Path, strength: str = "0.5") -> Path:
    header = json.dumps({"__metadata__": {"format": scales.FORMAT, "smoothing_strength": strength}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode())
    return path


def test_every_scheme_maps_to_a_catalog_column():
    models = catalog.load(CATALOG)
    for name, scheme in schemes.SCHEMES.items():
        assert catalog.SCHEME_COLUMN[name] == scheme.catalog
        assert catalog.supports(models, "tiny-llama", name), name
    # the seeds' table: qwen2.5-7b has W4A16 but not W8A8, no KV-cache quantization
    assert catalog.supports(models, "qwen2.5-7b", "w4a16-awq")
    assert not catalog.supports(models, "qwen2.5-7b", "w8a8")
    assert not catalog.supports(models, "qwen2.5-7b", "kv-fp8")
    assert catalog.supports(models, "llama2-7b", "kv-fp8")


@pytest.mark.parametrize(
    ("model", "scheme", "column"),
    [
        ("baichuan2-7b", "w4a16-gptq", "w4a16"),
        ("baichuan2-7b", "w4a16-awq", "w4a16"),
        ("baichuan2-7b", "w8a8", "w8a8"),
        ("qwen2.5-7b", "kv-fp8", "kv_cache_int8"),
        ("mistral-7b", "w8a16", "w8a16"),
    ],
)
def test_catalog_enforced_for_every_scheme(tmp_path, model, scheme, column):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"num_hidden_layers": 4}')
    (hf / "tokenizer.json").write_text("{}")
    (hf / "model.safetensors").write_text("")
    cfg = filled(
        {
            "model": {"name": model, "source": "hf", "path": str(hf)},
            "quantize": {"schemes": [scheme]},
        }
    )
    msg = refusal(cfg)
    assert msg.startswith(f"c.yaml: quantize.schemes: model {model!r} does not support {scheme}")
    assert f"(column {column})" in msg


def test_a_scheme_the_stack_cannot_serve_is_refused(monkeypatch):
    monkeypatch.setitem(schemes.CANNOT_SERVE, ("serve-cpu", "cpu"), {"kv-int8": "vLLM says no"})
    msg = refusal(filled({"quantize": {"schemes": ["w8a8", "kv-int8"]}}))
    assert msg.startswith("c.yaml: quantize.schemes: kv-int8 cannot be served by serve-cpu on cpu")
    assert "(vLLM says no)" in msg and "set serve.stack / serve.device" in msg
    assert "this stack serves w8a8, w8a16" in msg


def test_the_recorded_cpu_refusals_are_enforced():
    for scheme, why in schemes.CANNOT_SERVE[("serve-cpu", "cpu")].items():
        msg = refusal(filled({"quantize": {"schemes": [scheme]}}))
        assert f"{scheme} cannot be served by serve-cpu on cpu ({why})" in msg
    for scheme in schemes.servable("serve-cpu", "cpu"):
        plan.check_plan(filled({"quantize": {"schemes": [scheme]}}), CATALOG, "c.yaml")


def test_scale_input_checked_at_planning(tmp_path):
    good = scale_file(tmp_path / "s.safetensors")
    plan.check_plan(filled({"quantize": {"scale_input": str(good)}}), CATALOG, "c.yaml")
    msg = refusal(filled({"quantize": {"scale_input": str(tmp_path / "none.safetensors")}}))
    assert msg.startswith("c.yaml: quantize.scale_input: ") and "does not exist" in msg
    other = scale_file(tmp_path / "o.safetensors", "0.8")
    msg = refusal(filled({"quantize": {"scale_input": str(other)}}))
    assert "made with smoothing strength 0.8, but quantize.smoothing_strength is 0.5" in msg
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    msg = refusal(filled({"quantize": {"scale_input": str(tmp_path / "bad.safetensors")}}))
    assert msg.startswith(f"{tmp_path / 'bad.safetensors'}: quantize.scale_input: not a")


def test_calib_path_checked(tmp_path):
    msg = refusal(filled({"quantize": {"calib": str(tmp_path / "none.jsonl")}}))
    assert msg.startswith("c.yaml: quantize.calib: ") and "does not exist" in msg


def test_variant_dirs_of_hyphenated_schemes():
    cfg = {"train": {"phases": ["pretrain", "sft"]}}
    assert plan.variant_model_dir(cfg, "m", "sft-w4a16-gptq") == "results/m/sft/quant/w4a16-gptq"
    cfg = filled({"quantize": {"schemes": ["w8a8", "w4a16-awq", "kv-fp8"]}})
    assert plan.served_variants(cfg) == ["base", "sft", "sft-w8a8", "sft-w4a16-awq", "sft-kv-fp8"]
