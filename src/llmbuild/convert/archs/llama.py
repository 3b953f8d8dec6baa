"""Llama (Llama 2/3/3.1/3.2) and Yi: no biases, SwiGLU, RMSNorm, rotary."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmbuild.convert import weights as W
from llmbuild.convert.archs import ArchSpec, Rule, Shape

if TYPE_CHECKING:
    from llmbuild.mcore.description import ModelArgs

KEY_MAP: dict[str, Rule] = {
    "embedding.word_embeddings.weight": Rule(("model.embed_tokens.weight",), W.VOCAB),
    "decoder.layers.{}.input_layernorm.weight": Rule(
        ("model.layers.{}.input_layernorm.weight",), W.REPLICATED
    ),
    "decoder.layers.{}.self_attention.linear_qkv.weight": Rule(
        (
            "model.layers.{}.self_attn.q_proj.weight",
            "model.layers.{}.self_attn.k_proj.weight",
            "model.layers.{}.self_attn.v_proj.weight",
        ),
        W.QKV,
    ),
    "decoder.layers.{}.self_attention.linear_proj.weight": Rule(
        ("model.layers.{}.self_attn.o_proj.weight",), W.ROW
    ),
    "decoder.layers.{}.pre_mlp_layernorm.weight": Rule(
        ("model.layers.{}.post_attention_layernorm.weight",), W.REPLICATED
    ),
    "decoder.layers.{}.mlp.linear_fc1.weight": Rule(
        ("model.layers.{}.mlp.gate_proj.weight", "model.layers.{}.mlp.up_proj.weight"),
        W.GATE_UP,
    ),
    "decoder.layers.{}.mlp.linear_fc2.weight": Rule(
        ("model.layers.{}.mlp.down_proj.weight",), W.ROW
    ),
    "decoder.final_layernorm.weight": Rule(("model.norm.weight",), W.REPLICATED),
    "output_layer.weight": Rule(("lm_head.weight",), W.VOCAB),
}


def hf_shapes(args: ModelArgs) -> dict[str, Shape]:
    h, q = args.hidden_size, args.num_attention_heads * args.kv_channels
    kv, ffn = args.num_query_groups * args.kv_channels, args.ffn_hidden_size
    return {
        "model.embed_tokens.weight": (args.vocab_size, h),
        "lm_head.weight": (args.vocab_size, h),
        "model.norm.weight": (h,),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (ffn, h),
        "mlp.up_proj.weight": (ffn, h),
        "mlp.down_proj.weight": (h, ffn),
    }


LLAMA = ArchSpec("llama", ("LlamaForCausalLM",), ("llama",), KEY_MAP, hf_shapes)
# Yi: Llama's layout. Current Yi checkpoints say LlamaForCausalLM / "llama"; the first releases
# said YiForCausalLM / "Yi" (with trust_remote_code); both read as llama weights, and a
# converted Yi is written as Llama (Yi's own class needs remote code).
YI = ArchSpec(
    "yi",
    ("YiForCausalLM",),
    ("Yi", "yi"),
    KEY_MAP,
    hf_shapes,
    write_as=("LlamaForCausalLM", "llama"),
)
