"""Megatron LoRA adapter -> PEFT adapter (loaded by PEFT, standard key names) and -> merged
model; both give the logits of the base with the megatron-side update applied by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

pytestmark = pytest.mark.parity

R_, ALPHA = 4, 8.0


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "llmbuild", "convert", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _megatron_lora(out: Path, cfg: dict, *, seed: int = 0, nemo_names: bool = False) -> dict:
    """A random adapter in the documented Megatron layout (every module of every layer)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    h, ffn = cfg["hidden_size"], cfg["intermediate_size"]
    heads, groups = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = h // heads
    shapes = {
        "self_attention.linear_qkv": (h, (heads + 2 * groups) * hd),
        "self_attention.linear_proj": (heads * hd, h),
        "mlp.linear_fc1": (h, 2 * ffn),
        "mlp.linear_fc2": (ffn, h),
    }
    a_name, b_name = (
        ("adapter.linear_in", "adapter.linear_out") if nemo_names else ("lora_A", "lora_B")
    )
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for module, (fan_in, fan_out) in shapes.items():
            p = f"decoder.layers.{layer}.{module}"
            tensors[f"{p}.{a_name}.weight"] = torch.randn(R_, fan_in, generator=g) * 0.1
            tensors[f"{p}.{b_name}.weight"] = torch.randn(fan_out, R_, generator=g) * 0.1
    out.mkdir(parents=True)
    save_file(tensors, str(out / "adapter.safetensors"))
    (out / "lora_config.json").write_text(json.dumps({"r": R_, "alpha": ALPHA}))
    return tensors


def _merged_by_hand(base_dir: Path, tensors: dict, nemo_names: bool = False):
    """The base model with W += (alpha/r) B A applied in megatron space, then mapped to HF."""
    from transformers import AutoModelForCausalLM

    from llmbuild.convert import weights as W

    model = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
    cfg = model.config
    a_name, b_name = (
        ("adapter.linear_in", "adapter.linear_out") if nemo_names else ("lora_A", "lora_B")
    )
    sd = model.state_dict()
    s = ALPHA / R_
    with torch.no_grad():
        for layer in range(cfg.num_hidden_layers):
            p = f"decoder.layers.{layer}"
            hp = f"model.layers.{layer}"

            def delta(module, p=p):
                return (
                    s
                    * tensors[f"{p}.{module}.{b_name}.weight"]
                    @ tensors[f"{p}.{module}.{a_name}.weight"]
                )

            dq, dk, dv = W.split_qkv(
                delta("self_attention.linear_qkv"),
                num_heads=cfg.num_attention_heads,
                num_groups=cfg.num_key_value_heads,
                head_dim=cfg.hidden_size // cfg.num_attention_heads,
            )
            dg, du = W.split_gate_up(delta("mlp.linear_fc1"))
            for name, d in (
                ("self_attn.q_proj", dq),
                ("self_attn.k_proj", dk),
                ("self_attn.v_proj", dv),
                ("self_attn.o_proj", delta("self_attention.linear_proj")),
                ("mlp.gate_proj", dg),
                ("mlp.up_proj", du),
                ("mlp.down_proj", delta("mlp.linear_fc2")),
            ):
                sd[f"{hp}.{name}.weight"] += d
    return model


@pytest.mark.parametrize("arch", ["llama", pytest.param("qwen2", marks=pytest.mark.slow)])
def test_peft_adapter_and_merged_model(arch, tmp_path):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base"
    tiny.make_model(base, arch=arch, layers=2, tied=arch == "qwen2")
    cfg = json.loads((base / "config.json").read_text())
    nemo = arch == "qwen2"  # the NeMo spelling of the same tensors
    tensors = _megatron_lora(tmp_path / "mlora", cfg, nemo_names=nemo)

    r = _cli(
        "lora2hf",
        "--input",
        str(tmp_path / "mlora"),
        "--base",
        str(base),
        "--output",
        str(tmp_path / "peft"),
        "--base-name",
        "tiny-base",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "peft"
    acfg = json.loads((out / "adapter_config.json").read_text())
    assert acfg["peft_type"] == "LORA" and acfg["r"] == R_ and acfg["lora_alpha"] == ALPHA
    assert acfg["base_model_name_or_path"] == "tiny-base"
    assert acfg["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        qb = f.get_tensor("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight")
    assert len(keys) == 2 * 7 * 2
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys
    assert qb.shape == (cfg["num_key_value_heads"] * 32, R_)

    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(3))
    base_model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    with torch.no_grad():
        plain = base_model(ids).logits
    peft_model = PeftModel.from_pretrained(base_model, str(out)).eval()
    with torch.no_grad():
        got = peft_model(ids).logits
        ref = _merged_by_hand(base, tensors, nemo_names=nemo)(ids).logits
    assert (got - plain).abs().max() > 1e-2  # the adapter changes the model ...
    assert (got - ref).abs().max().item() <= 1e-5  # ... exactly as the megatron update does

    r = _cli(
        "lora2hf",
        "--input",
        str(tmp_path / "mlora"),
        "--base",
        str(base),
        "--output",
        str(tmp_path / "merged"),
        "--merge",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        m = merged(ids).logits
    assert (m - ref).abs().max().item() <= 1e-5
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "merged" / name).is_file()


def test_adapter_not_matching_the_base_is_one_line(tmp_path):
    base = tmp_path / "base"
    tiny.make_model(base, arch="llama", layers=2)
    cfg = json.loads((base / "config.json").read_text())
    cfg["intermediate_size"] = 256  # adapter made for another model
    _megatron_lora(tmp_path / "mlora", cfg)
    r = _cli(
        "lora2hf",
        "--input",
        str(tmp_path / "mlora"),
        "--base",
        str(base),
        "--output",
        str(tmp_path / "peft"),
    )
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "expected" in lines[0] and "adapter.safetensors" in lines[0]
    assert not (tmp_path / "peft").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".peft")] == []
