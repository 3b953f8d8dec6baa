"""SmoothQuant W8A8 of a tiny random Llama through the CLI handler, in the quantize env."""

from __future__ import annotations

import argparse
import json

import pytest

pytestmark = pytest.mark.e2e
pytest.importorskip("llmcompressor")
torch = pytest.importorskip("torch")

from llmbuild.errors import UserError  # noqa: E402
from llmbuild.quantize import cli  # noqa: E402

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def quantized(tiny_model, calib_file, tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    out, scales = d / "w8a8", d / "scales.safetensors"
    rc = _main(
        [
            "smoothquant",
            "--input",
            str(tiny_model),
            "--calib",
            str(calib_file),
            "--output",
            str(out),
            "--scheme",
            "W8A8",
            "--smoothing-strength",
            "0.5",
            "--num-samples",
            "8",
            "--seq-length",
            "64",
            "--seed",
            "0",
            "--scale-output",
            str(scales),
        ]
    )
    assert rc == 0
    return out, scales


def test_w8a8_config_and_files(quantized):
    out, _ = quantized
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["format"] == "int-quantized"
    (group,) = qc["config_groups"].values()
    w, a = group["weights"], group["input_activations"]
    assert (w["type"], w["num_bits"], w["strategy"], w["symmetric"]) == ("int", 8, "channel", True)
    assert (a["type"], a["num_bits"], a["strategy"], a["dynamic"]) == ("int", 8, "token", True)
    assert "lm_head" in qc["ignore"]
    for name in TOKENIZER_FILES:
        assert (out / name).is_file(), name
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["quantization"]["smoothed_layers"] == 8  # 4 layers x (attn, mlp) norms
    assert not list(out.parent.glob(".w8a8.tmp-*"))

    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        q = fh.get_tensor("model.layers.0.self_attn.q_proj.weight")
        s = fh.get_tensor("model.layers.0.self_attn.q_proj.weight_scale")
    assert q.dtype == torch.int8 and tuple(s.shape) == (q.shape[0], 1)


def test_scales_reused_bit_for_bit(quantized, tiny_model, tmp_path):
    out, scales = quantized
    from safetensors.torch import load_file

    from llmbuild.quantize import scales as sc

    loaded = sc.load(scales)
    assert loaded.strength == 0.5 and len(loaded.scales) == 8
    assert loaded.balance["model.layers.0.input_layernorm"] == [
        f"model.layers.0.self_attn.{p}_proj" for p in "qkv"
    ]
    rc = _main(
        [
            "smoothquant",
            "--input",
            str(tiny_model),
            "--output",
            str(tmp_path / "re"),
            "--scale-input",
            str(scales),
        ]
    )
    assert rc == 0
    a, b = (
        load_file(str(out / "model.safetensors")),
        load_file(str(tmp_path / "re/model.safetensors")),
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="made with smoothing strength 0.5"):
        _main(
            [
                "smoothquant",
                "--input",
                str(tiny_model),
                "--output",
                str(tmp_path / "x"),
                "--scale-input",
                str(scales),
                "--smoothing-strength",
                "0.8",
            ]
        )
    assert not (tmp_path / "x").exists()


def test_quantized_logits_close(quantized, tiny_model):
    from transformers import AutoModelForCausalLM

    out, _ = quantized
    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    q = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        la, lb = ref(ids).logits[0], q(ids).logits[0]
    cos = torch.nn.functional.cosine_similarity(la, lb, dim=-1)
    assert cos.min().item() > 0.999
    assert not torch.equal(la, lb)  # it really is quantized


def test_w4a16_weight_only_gptq(tiny_model, calib_file, tmp_path):
    out = tmp_path / "w4a16"
    argv = ["weight-only", "--input", str(tiny_model), "--calib", str(calib_file)]
    argv += ["--output", str(out), "--num-samples", "4", "--seq-length", "32"]
    assert _main(argv) == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    (group,) = qc["config_groups"].values()
    w = group["weights"]
    assert (qc["format"], w["num_bits"], w["strategy"], w["group_size"]) == (
        "pack-quantized",
        4,
        "group",
        128,
    )
    assert group["input_activations"] is None
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["quantization"]["modifiers"] == ["GPTQModifier"]
    assert all((out / n).is_file() for n in TOKENIZER_FILES)
