"""Architectures: one small module per family, each a literal, typed key map.

An architecture module declares its ``ArchSpec``: the HF class names and model types it reads,
its key map ``{megatron key: Rule(HF keys, how they combine)}`` (``{}`` is the layer index,
global in both; ``how`` is one of the ``weights`` combinations) and the shape of each HF tensor
from the model's ``ModelArgs``. ``registry`` collects them; the converter does exactly what the
key map says (hf2mg, mg2hf, LoRA, the torch_dist layout), so a new architecture is one file here
plus its line in ``registry.ARCHS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmbuild.convert.weights import Combination

if TYPE_CHECKING:
    from llmbuild.mcore.description import ModelArgs

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Rule:
    hf: tuple[str, ...]  # the HF tensors, in the order ``how`` combines them
    how: Combination


KeyMap = Mapping[str, Rule]


@dataclass(frozen=True)
class ArchSpec:
    name: str
    architectures: tuple[str, ...]  # HF `architectures` class names
    model_types: tuple[str, ...]  # HF `model_type`
    key_map: KeyMap
    # HF key (without ``model.layers.{i}.``) -> its shape, from the model's args
    hf_shapes: Callable[[ModelArgs], Mapping[str, Shape]]
    qkv_bias: bool = False
    # (HF class, model_type) a converted model is written as, if not its own
    write_as: tuple[str, str] | None = None

    def hf_shape(self, hf_key: str, args: ModelArgs) -> Shape:
        """The shape an HF tensor of this model must have (pure; from the config alone)."""
        suffix = hf_key.split(".", 3)[-1] if hf_key.startswith("model.layers.") else hf_key
        return self.hf_shapes(args)[suffix]
