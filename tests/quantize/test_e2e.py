"""Every scheme of a tiny random Llama through the CLI handlers, in the quantize env.

What each scheme must write (compressed-tensors, the recipe that made it), that only w8a8 is
smoothed and from its scale file, bit for bit, and that each quantized model still computes
nearly the float model's logits.
"""

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
CALIB = ["--num-samples", "8", "--seq-length", "64", "--seed", "0"]


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _qc(out) -> dict:
    return json.loads((out / "config.json").read_text())["quantization_config"]


def _group(out) -> dict:
    (group,) = _qc(out)["config_groups"].values()
    return group


def _prov(out) -> dict:
    return json.loads((out / "provenance.json").read_text())


def _tensors(out) -> dict:
    from safetensors.torch import load_file

    out_tensors = {}
    for f in sorted(out.glob("*.safetensors")):
        out_tensors |= load_file(str(f))
    return out_tensors


@pytest.fixture(scope="module")
def scales(tiny_model, calib_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("scales") / "smoothquant.safetensors"
    argv = ["scales", "--input", str(tiny_model), "--calib", str(calib_file)]
    argv += ["--output", str(path), "--smoothing-strength", "0.5", *CALIB]
    assert _main(argv) == 0
    return path


@pytest.fixture(scope="module")
def quantized(tiny_model, calib_file, scales, tmp_path_factory):
    """scheme -> output directory, each made as the graph makes it."""
    d = tmp_path_factory.mktemp("q")
    made = {}
    for scheme in ("w8a8", "w8a16", "w4a16-gptq", "w4a16-awq", "kv-fp8", "kv-int8"):
        argv = ["run", "--scheme", scheme, "--input", str(tiny_model), "--output", str(d / scheme)]
        if scheme == "w8a8":
            argv += ["--scale-input", str(scales)]
        elif scheme != "w8a16":
            argv += ["--calib", str(calib_file), *CALIB]
        assert _main(argv) == 0, scheme
        made[scheme] = d / scheme
    return made


def test_scale_file(scales, tiny_model):
    from llmbuild.quantize import scales as sc

    loaded = sc.load(scales)
    assert loaded.strength == 0.5 and len(loaded.scales) == 8  # 4 layers x (attn, mlp) norms
    assert loaded.balance["model.layers.0.input_layernorm"] == [
        f"model.layers.0.self_attn.{p}_proj" for p in "qkv"
    ]
    assert all(
        bool((s > 0).all()) and not torch.equal(s, torch.ones_like(s))
        for s in loaded.scales.values()
    )
    prov = json.loads(scales.with_name(scales.name + ".provenance.json").read_text())
    assert prov["command"] == "llmbuild quantize scales"
    assert prov["smoothing"]["samples"] == 8 and prov["smoothing"]["smoothed_layers"] == 8


def test_w8a8_config_and_files(quantized, scales):
    out = quantized["w8a8"]
    qc = _qc(out)
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["format"] == "int-quantized"
    w, a = _group(out)["weights"], _group(out)["input_activations"]
    assert (w["type"], w["num_bits"], w["strategy"], w["symmetric"]) == ("int", 8, "channel", True)
    assert (a["type"], a["num_bits"], a["strategy"], a["dynamic"]) == ("int", 8, "token", True)
    assert "lm_head" in qc["ignore"]
    for name in TOKENIZER_FILES:
        assert (out / name).is_file(), name
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    prov = _prov(out)
    assert prov["quantization"]["smoothed_layers"] == 8
    assert prov["quantization"]["scales_from"] == str(scales)
    assert prov["quantization"]["modifiers"] == ["QuantizationModifier"]
    from llmbuild.provenance import file_digest

    assert file_digest(scales) in json.dumps(prov["inputs"])  # the scale file is an input
    assert not list(out.parent.glob(".w8a8.tmp-*"))
    t = _tensors(out)
    q, s = (
        t["model.layers.0.self_attn.q_proj.weight"],
        t["model.layers.0.self_attn.q_proj.weight_scale"],
    )
    assert q.dtype == torch.int8 and tuple(s.shape) == (q.shape[0], 1)


def test_w8a8_smoothed_from_the_file_bit_for_bit(
    quantized, tiny_model, scales, calib_file, tmp_path
):
    """The same scale file gives the same bytes; computing the scales in the same run (the
    seeds' one step) gives them too; smoothing really moved the norms."""
    from safetensors.torch import load_file

    again = tmp_path / "again"
    assert (
        _main(
            [
                "run",
                "--scheme",
                "w8a8",
                "--input",
                str(tiny_model),
                "--output",
                str(again),
                "--scale-input",
                str(scales),
            ]
        )
        == 0
    )
    a, b = _tensors(quantized["w8a8"]), _tensors(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    one_step = tmp_path / "one"
    argv = ["smoothquant", "--input", str(tiny_model), "--output", str(one_step)]
    argv += ["--calib", str(calib_file), *CALIB, "--scale-output", str(tmp_path / "s.safetensors")]
    assert _main(argv) == 0
    c = _tensors(one_step)
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "s.safetensors").read_bytes() == scales.read_bytes()
    base = load_file(str(tiny_model / "model.safetensors"))
    norm = "model.layers.0.input_layernorm.weight"
    assert not torch.equal(a[norm], base[norm])


def test_weight_only_schemes_are_not_smoothed(quantized, tiny_model):
    from safetensors.torch import load_file

    base = load_file(str(tiny_model / "model.safetensors"))
    norms = [k for k in base if k.endswith("layernorm.weight")]
    for scheme in ("w8a16", "w4a16-gptq", "kv-fp8"):
        t = _tensors(quantized[scheme])
        assert all(torch.equal(t[k], base[k]) for k in norms), scheme
        assert _prov(quantized[scheme])["quantization"]["smoothed_layers"] == 0
    with pytest.raises(UserError, match="w4a16-gptq is weight-only and gets no SmoothQuant"):
        _main(
            [
                "run",
                "--scheme",
                "w4a16-gptq",
                "--input",
                str(tiny_model),
                "--output",
                "x",
                "--scale-input",
                str(tiny_model / "config.json"),
            ]
        )


def test_w8a16(quantized):
    out = quantized["w8a16"]
    g = _group(out)
    w = g["weights"]
    # compressed-tensors 0.19's W8A16 preset: int8 weights in groups of 128
    assert (w["type"], w["num_bits"], w["strategy"], w["group_size"]) == ("int", 8, "group", 128)
    assert g["input_activations"] is None
    assert _prov(out)["quantization"]["modifiers"] == ["QuantizationModifier"]
    assert _prov(out)["quantization"]["samples"] == 0  # round to nearest reads no data


def test_w4a16_gptq_is_gptq(quantized, tmp_path, tiny_model):
    out = quantized["w4a16-gptq"]
    qc, g = _qc(out), _group(out)
    w = g["weights"]
    assert (qc["format"], w["num_bits"], w["strategy"], w["group_size"], w["symmetric"]) == (
        "pack-quantized",
        4,
        "group",
        128,
        True,
    )
    assert g["input_activations"] is None
    prov = _prov(out)["quantization"]
    assert prov["modifiers"] == ["GPTQModifier"] and prov["samples"] == 8
    assert "model.layers.0.mlp.down_proj.weight_packed" in _tensors(out)


def test_gptq_beats_round_to_nearest_on_calibration_text(quantized, tiny_model, calib_file):
    """Real GPTQ: on text like its calibration data, its logits are closer to the float
    model's than those of the same W4A16 preset rounded to nearest."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok(
        " ".join(
            json.loads(ln).get("text", "") or json.loads(ln)["output"]
            for ln in calib_file.read_text().splitlines()[:8]
        ),
        return_tensors="pt",
    )["input_ids"][:, :64]

    def logits(model):
        with torch.no_grad():
            return model(ids).logits[0]

    ref = logits(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval())
    rtn = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    oneshot(
        model=rtn,
        recipe=QuantizationModifier(targets=["Linear"], scheme="W4A16", ignore=["lm_head"]),
    )
    gptq = AutoModelForCausalLM.from_pretrained(quantized["w4a16-gptq"]).eval()
    err_rtn = (logits(rtn) - ref).pow(2).mean().item()
    err_gptq = (logits(gptq) - ref).pow(2).mean().item()
    assert err_gptq < err_rtn, (err_gptq, err_rtn)


def test_w4a16_awq(quantized, tiny_model):
    out = quantized["w4a16-awq"]
    g = _group(out)
    w = g["weights"]
    assert (w["num_bits"], w["strategy"], w["group_size"], w["symmetric"]) == (
        4,
        "group",
        128,
        False,
    )
    prov = _prov(out)["quantization"]
    assert prov["modifiers"] == ["AWQModifier", "QuantizationModifier"]
    assert "model.layers.0.self_attn.q_proj.weight_zero_point" in _tensors(out)


@pytest.mark.parametrize(("scheme", "kind"), [("kv-fp8", "float"), ("kv-int8", "int")])
def test_kv_cache_schemes(quantized, scheme, kind):
    out = quantized[scheme]
    qc = _qc(out)
    kv = qc["kv_cache_scheme"]
    assert (kv["type"], kv["num_bits"], kv["strategy"], kv["dynamic"]) == (kind, 8, "tensor", False)
    assert not qc.get("config_groups")
    t = _tensors(out)
    k = t["model.layers.0.self_attn.k_scale"]
    assert k.numel() == 1 and float(k) > 0
    assert t["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float32


# min cosine similarity of each position's logits to the float model's, on a random tiny model
# (measured: w8a8 and w8a16 > 0.999, kv-fp8 0.9986, w4a16-awq 0.954, w4a16-gptq 0.927)
CLOSE = {"w8a8": 0.999, "w8a16": 0.999, "kv-fp8": 0.995, "w4a16-gptq": 0.9, "w4a16-awq": 0.9}


@pytest.mark.parametrize("scheme", sorted(CLOSE))
def test_quantized_logits_close(quantized, tiny_model, scheme):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    q = AutoModelForCausalLM.from_pretrained(quantized[scheme]).eval()
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        la, lb = ref(ids).logits[0], q(ids).logits[0]
    cos = torch.nn.functional.cosine_similarity(la, lb, dim=-1)
    assert cos.min().item() > CLOSE[scheme], scheme
    assert not torch.equal(la, lb)  # it really is quantized (the KV cache too)


def test_scale_file_strength_must_match(scales, tiny_model, tmp_path):
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
