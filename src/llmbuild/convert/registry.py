"""Architectures this converter knows, as literal key maps (litgpt / torchtune style).

Each map is ``megatron key -> (HF keys, how they combine, tensor-parallel kind)``; ``{}`` is the
layer index (global in both). ``hf_to_mcore`` / ``mcore_to_hf`` are pure dict -> dict functions
over these maps; the checkpointer (``checkpointer.py``) owns all I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmbuild.convert import weights as W
from llmbuild.errors import UserError

if TYPE_CHECKING:
    import torch

    from llmbuild.mcore.model import ModelArgs

# How the HF tensors of one rule become the megatron tensor.
COPY, QKV, GATE_UP, VOCAB = "copy", "qkv", "gate_up", "vocab"


@dataclass(frozen=True)
class Rule:
    hf: tuple[str, ...]
    combine: str
    parallel: str


# Llama (Llama 2/3/3.1/3.2, Yi): no biases, SwiGLU, RMSNorm, rotary.
LLAMA: dict[str, Rule] = {
    "embedding.word_embeddings.weight": Rule(("model.embed_tokens.weight",), VOCAB, W.VOCAB),
    "decoder.layers.{}.input_layernorm.weight": Rule(
        ("model.layers.{}.input_layernorm.weight",), COPY, W.REPLICATED
    ),
    "decoder.layers.{}.self_attention.linear_qkv.weight": Rule(
        (
            "model.layers.{}.self_attn.q_proj.weight",
            "model.layers.{}.self_attn.k_proj.weight",
            "model.layers.{}.self_attn.v_proj.weight",
        ),
        QKV,
        W.QKV,
    ),
    "decoder.layers.{}.self_attention.linear_proj.weight": Rule(
        ("model.layers.{}.self_attn.o_proj.weight",), COPY, W.ROW
    ),
    "decoder.layers.{}.pre_mlp_layernorm.weight": Rule(
        ("model.layers.{}.post_attention_layernorm.weight",), COPY, W.REPLICATED
    ),
    "decoder.layers.{}.mlp.linear_fc1.weight": Rule(
        ("model.layers.{}.mlp.gate_proj.weight", "model.layers.{}.mlp.up_proj.weight"),
        GATE_UP,
        W.SWIGLU,
    ),
    "decoder.layers.{}.mlp.linear_fc2.weight": Rule(
        ("model.layers.{}.mlp.down_proj.weight",), COPY, W.ROW
    ),
    "decoder.final_layernorm.weight": Rule(("model.norm.weight",), COPY, W.REPLICATED),
    "output_layer.weight": Rule(("lm_head.weight",), VOCAB, W.VOCAB),
}

# Qwen2 / Qwen2.5: Llama plus biases on q, k, v (and often tied embeddings).
QWEN2: dict[str, Rule] = {
    **LLAMA,
    "decoder.layers.{}.self_attention.linear_qkv.bias": Rule(
        (
            "model.layers.{}.self_attn.q_proj.bias",
            "model.layers.{}.self_attn.k_proj.bias",
            "model.layers.{}.self_attn.v_proj.bias",
        ),
        QKV,
        W.QKV,
    ),
}

# HF keys that carry no weights (old checkpoints store rotary buffers).
IGNORED_HF_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    architectures: tuple[str, ...]  # HF `architectures` class names
    model_types: tuple[str, ...]  # HF `model_type`
    key_map: Mapping[str, Rule]
    qkv_bias: bool = False


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", ("LlamaForCausalLM",), ("llama",), LLAMA),
    "qwen2": ArchSpec("qwen2", ("Qwen2ForCausalLM",), ("qwen2",), QWEN2, qkv_bias=True),
    "mistral": ArchSpec("mistral", ("MistralForCausalLM",), ("mistral",), LLAMA),
    # Yi: Llama's layout. Current Yi checkpoints say LlamaForCausalLM / "llama"; the first
    # releases said YiForCausalLM / "Yi" (with trust_remote_code); both read as llama weights.
    "yi": ArchSpec("yi", ("YiForCausalLM",), ("Yi", "yi"), LLAMA),
}
# The HF class a converted model is written as (Yi's own class needs remote code).
HF_CLASS = {"yi": ("LlamaForCausalLM", "llama")}


def supported() -> str:
    return ", ".join(f"{a} ({s.name})" for s in ARCHS.values() for a in s.architectures)


def find_arch(hf_config: Mapping[str, Any], path: object = "config.json") -> ArchSpec:
    """The spec for an HF config: by ``architectures`` first, then by ``model_type``."""
    archs = list(hf_config.get("architectures") or [])
    for spec in ARCHS.values():
        if any(a in spec.architectures for a in archs):
            return spec
    model_type = hf_config.get("model_type")
    if not archs:
        for spec in ARCHS.values():
            if model_type in spec.model_types:
                return spec
    named = archs[0] if archs else model_type
    raise UserError(
        f"architecture {named!r} is not supported; supported: {supported()}",
        path=path,
        field="architectures",
    )


# --------------------------------------------------------------------------- key expansion


def key_table(spec: ArchSpec, args: ModelArgs) -> dict[str, tuple[Rule, tuple[str, ...]]]:
    """Every global megatron key of the model -> (its rule, its concrete HF keys)."""
    table: dict[str, tuple[Rule, tuple[str, ...]]] = {}
    for template, rule in spec.key_map.items():
        if template == "output_layer.weight" and args.tie_word_embeddings:
            continue
        if "{}" in template:
            for layer in range(args.num_layers):
                table[template.format(layer)] = (rule, tuple(h.format(layer) for h in rule.hf))
        else:
            table[template] = (rule, rule.hf)
    return table


def mcore_keys(spec: ArchSpec, args: ModelArgs) -> list[str]:
    return list(key_table(spec, args))


def hf_keys(spec: ArchSpec, args: ModelArgs) -> list[str]:
    return [h for _, keys in key_table(spec, args).values() for h in keys]


def hf_shape(hf_key: str, args: ModelArgs) -> tuple[int, ...]:
    """The shape an HF tensor of this model must have (pure; from the config alone)."""
    h, q = args.hidden_size, args.num_attention_heads * args.kv_channels
    kv = args.num_query_groups * args.kv_channels
    suffix = hf_key.split(".", 3)[-1] if hf_key.startswith("model.layers.") else hf_key
    shapes = {
        "model.embed_tokens.weight": (args.vocab_size, h),
        "lm_head.weight": (args.vocab_size, h),
        "model.norm.weight": (h,),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (args.ffn_hidden_size, h),
        "mlp.up_proj.weight": (args.ffn_hidden_size, h),
        "mlp.down_proj.weight": (h, args.ffn_hidden_size),
    }
    return shapes[suffix]


def megatron_shapes(spec: ArchSpec, args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Global shape of every megatron key (padded vocabulary included), from the config
    (arithmetic: the shape ``combine`` gives for tensors of ``hf_shape``)."""
    out = {}
    for key, (rule, keys) in key_table(spec, args).items():
        shapes = [hf_shape(k, args) for k in keys]
        first = shapes[0]
        if rule.combine == VOCAB:
            out[key] = (args.padded_vocab_size, *first[1:])
        elif rule.combine in (QKV, GATE_UP):
            out[key] = (sum(s[0] for s in shapes), *first[1:])
        else:
            out[key] = first
    return out


# --------------------------------------------------------------------------- combine / split


def combine(kind: str, tensors: list[torch.Tensor], args: ModelArgs) -> torch.Tensor:
    """HF tensors of one rule -> the global megatron tensor."""
    if kind == COPY:
        return tensors[0]
    if kind == VOCAB:
        return W.pad_vocab(tensors[0], args.padded_vocab_size)
    if kind == QKV:
        q, k, v = tensors
        return W.fuse_qkv(
            q,
            k,
            v,
            num_heads=args.num_attention_heads,
            num_groups=args.num_query_groups,
            head_dim=args.kv_channels,
        )
    if kind == GATE_UP:
        return W.fuse_gate_up(*tensors)
    raise ValueError(f"unknown combine kind {kind!r}")


def split(kind: str, t: torch.Tensor, args: ModelArgs) -> list[torch.Tensor]:
    """Inverse of ``combine``."""
    if kind == COPY:
        return [t]
    if kind == VOCAB:
        return [W.unpad_vocab(t, args.vocab_size)]
    if kind == QKV:
        return list(
            W.split_qkv(
                t,
                num_heads=args.num_attention_heads,
                num_groups=args.num_query_groups,
                head_dim=args.kv_channels,
            )
        )
    if kind == GATE_UP:
        return list(W.split_gate_up(t))
    raise ValueError(f"unknown combine kind {kind!r}")


def hf_to_mcore(
    hf: Mapping[str, torch.Tensor], spec: ArchSpec, args: ModelArgs, only: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """HF state dict (a Mapping; may load lazily) -> global megatron state dict.

    ``only``: just these megatron keys (a pipeline stage's), each read from ``hf`` on demand.
    """
    table = key_table(spec, args)
    out: dict[str, torch.Tensor] = {}
    for key in table if only is None else only:
        rule, keys = table[key]
        out[key] = combine(rule.combine, [hf[k] for k in keys], args)
    return out


def mcore_to_hf(
    mg: Mapping[str, torch.Tensor], spec: ArchSpec, args: ModelArgs
) -> dict[str, torch.Tensor]:
    """Global megatron state dict -> HF state dict (tied models get no lm_head.weight)."""
    out: dict[str, torch.Tensor] = {}
    for key, (rule, keys) in key_table(spec, args).items():
        for name, t in zip(keys, split(rule.combine, mg[key], args), strict=True):
            out[name] = t
    return out


def unexpected_hf_keys(present: list[str], spec: ArchSpec, args: ModelArgs) -> list[str]:
    """HF keys the map does not consume (tied lm_head and rotary buffers are fine)."""
    expected = set(hf_keys(spec, args))
    if args.tie_word_embeddings:
        expected.add("lm_head.weight")
    return sorted(k for k in present if k not in expected and not k.endswith(IGNORED_HF_SUFFIXES))
