"""The architectures this converter knows, collected from ``archs``, and their key maps expanded.

``key_table`` turns an architecture's key map into every concrete megatron key of a model ->
(its rule, its HF keys); everything the converter does follows that table: which HF tensors
exist and their shapes (``hf_keys``, ``ArchSpec.hf_shape``), the megatron tensors' shapes
(``megatron_shapes``), how each is combined, streamed and split across tensor-parallel ranks
(the rule's ``how``, see ``weights``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llmbuild.convert.archs import ArchSpec, Rule, llama, mistral, qwen2
from llmbuild.errors import UserError

if TYPE_CHECKING:
    from llmbuild.mcore.description import ModelArgs

# In the order they are matched and listed.
ARCHS: dict[str, ArchSpec] = {
    s.name: s for s in (llama.LLAMA, qwen2.QWEN2, mistral.MISTRAL, llama.YI)
}
# HF keys that carry no weights (old checkpoints store rotary buffers).
IGNORED_HF_SUFFIXES = (".rotary_emb.inv_freq",)


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


def hf_keys(spec: ArchSpec, args: ModelArgs) -> list[str]:
    return [h for _, keys in key_table(spec, args).values() for h in keys]


def megatron_shapes(spec: ArchSpec, args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Global shape of every megatron key (padded vocabulary included), from the config
    (arithmetic: the shape ``combine`` gives for tensors of ``hf_shape``)."""
    return {
        key: rule.how.megatron_shape([spec.hf_shape(k, args) for k in keys], args)
        for key, (rule, keys) in key_table(spec, args).items()
    }


def unexpected_hf_keys(present: list[str], spec: ArchSpec, args: ModelArgs) -> list[str]:
    """HF keys the map does not consume (tied lm_head and rotary buffers are fine)."""
    expected = set(hf_keys(spec, args))
    if args.tie_word_embeddings:
        expected.add("lm_head.weight")
    return sorted(k for k in present if k not in expected and not k.endswith(IGNORED_HF_SUFFIXES))
