"""Qwen2 / Qwen2.5: Llama plus biases on q, k, v (and often tied embeddings)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmbuild.convert import weights as W
from llmbuild.convert.archs import ArchSpec, Rule, Shape, llama

if TYPE_CHECKING:
    from llmbuild.mcore.description import ModelArgs

KEY_MAP: dict[str, Rule] = {
    **llama.KEY_MAP,
    "decoder.layers.{}.self_attention.linear_qkv.bias": Rule(
        (
            "model.layers.{}.self_attn.q_proj.bias",
            "model.layers.{}.self_attn.k_proj.bias",
            "model.layers.{}.self_attn.v_proj.bias",
        ),
        W.QKV,
    ),
}


def hf_shapes(args: ModelArgs) -> dict[str, Shape]:
    q = args.num_attention_heads * args.kv_channels
    kv = args.num_query_groups * args.kv_channels
    return llama.hf_shapes(args) | {
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,),
    }


QWEN2 = ArchSpec("qwen2", ("Qwen2ForCausalLM",), ("qwen2",), KEY_MAP, hf_shapes, qkv_bias=True)
