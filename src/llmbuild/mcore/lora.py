"""LoRA on megatron-core's linear layers, under tensor and pipeline parallelism.

``inject(model, ...)`` wraps the chosen linear layers of every decoder layer this rank holds
(``linear_qkv``, ``linear_proj``, ``linear_fc1``, ``linear_fc2``) in ``LoraLinear``:
``y = W x + s B A dropout(x)``, ``s = alpha / r``, A initialised as PEFT does (uniform in
``±1/sqrt(fan_in)``), B zero, so training starts from the base model's outputs. The base
weights stay frozen (``requires_grad`` off: megatron's linear layers then skip their weight
gradients, DDP and the optimizer skip them), so only A and B are trained.

Tensor parallelism follows the base layer's split:

- a column-parallel layer (``linear_qkv``, ``linear_fc1``; output split across ranks): A is
  replicated ``[r, in]``, B split by rows ``[out / tp, r]`` like the weight; the gradient of
  ``A x`` is summed over the tensor-parallel ranks (megatron's copy-to-region);
- a row-parallel layer (``linear_proj``, ``linear_fc2``; input split): A split by columns
  ``[r, in / tp]``, ``A x`` summed over the ranks (reduce-from-region), B replicated
  ``[out, r]``.

Split parameters carry megatron's tensor-parallel attributes, replicated ones none, so the
optimizer counts each once in the gradient norm. A is drawn whole from a generator seeded by
(seed, global layer, module) and each rank keeps its slice, so every layout starts from the
same adapter.

``gather_adapter`` assembles the global tensors on rank 0 (tensor-parallel slices joined,
pipeline stages collected) under the names ``convert/lora.py`` reads
(``decoder.layers.{i}.self_attention.linear_qkv.lora_A.weight``; ``linear_fc1``'s B as
``[gate; up]``, each half joined over the ranks as megatron's SwiGLU split keeps it).
torch and megatron are imported inside the functions (callers run after ``init_backend``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

from llmbuild.errors import UserError

# config name -> (attribute holding it in a TransformerLayer, its parallel kind)
TARGETS: dict[str, tuple[str, str]] = {
    "linear_qkv": ("self_attention", "column"),
    "linear_proj": ("self_attention", "row"),
    "linear_fc1": ("mlp", "column"),
    "linear_fc2": ("mlp", "row"),
}


def check_targets(targets: Sequence[str], field: str = "--target-modules") -> tuple[str, ...]:
    """The target modules, checked: known, not repeated, at least one."""
    out = tuple(targets)
    unknown = [t for t in out if t not in TARGETS]
    if unknown or not out or len(set(out)) != len(out):
        raise UserError(
            f"{','.join(out) or '(none)'}: give one or more of {', '.join(TARGETS)}, each once",
            field=field,
        )
    return out


def module_key(layer: int, target: str) -> str:
    """The megatron module name of ``target`` in (0-based, global) decoder layer ``layer``."""
    return f"decoder.layers.{layer}.{TARGETS[target][0]}.{target}"


def _seed_for(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")


def _lora_linear_class() -> type:
    import torch
    import torch.nn.functional as F
    from megatron.core.tensor_parallel.mappings import (
        copy_to_tensor_model_parallel_region,
        reduce_from_tensor_model_parallel_region,
    )

    class LoraLinear(torch.nn.Module):
        """A megatron linear layer plus a LoRA branch (see the module docstring)."""

        def __init__(
            self,
            base: Any,
            *,
            kind: str,
            in_features: int,
            out_features: int,
            r: int,
            scale: float,
            dropout: float,
            tp: int,
            tp_rank: int,
            init_seed: int,
        ) -> None:
            from megatron.core.tensor_parallel.layers import (
                set_tensor_model_parallel_attributes,
            )

            super().__init__()
            self.base = base
            self.kind = kind
            self.scale = scale
            self.r = r
            self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
            weight = base.weight
            gen = torch.Generator().manual_seed(init_seed)
            bound = 1.0 / math.sqrt(in_features)
            a = (torch.rand(r, in_features, generator=gen, dtype=torch.float32) * 2 - 1) * bound
            if kind == "column":
                self.lora_A = torch.nn.Parameter(a.to(weight.dtype).to(weight.device))
                b = torch.zeros(out_features // tp, r, dtype=weight.dtype, device=weight.device)
                self.lora_B = torch.nn.Parameter(b)
                set_tensor_model_parallel_attributes(self.lora_B, True, 0, 1)
            else:
                width = in_features // tp
                a = a[:, tp_rank * width : (tp_rank + 1) * width].contiguous()
                self.lora_A = torch.nn.Parameter(a.to(weight.dtype).to(weight.device))
                set_tensor_model_parallel_attributes(self.lora_A, True, 1, 1)
                b = torch.zeros(out_features, r, dtype=weight.dtype, device=weight.device)
                self.lora_B = torch.nn.Parameter(b)

        def forward(self, x: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            out, bias = self.base(x, *args, **kwargs)
            h = F.linear(self.dropout(x), self.lora_A)
            if self.kind == "column":
                h = copy_to_tensor_model_parallel_region(h)  # sum A's gradient over the ranks
            else:
                h = reduce_from_tensor_model_parallel_region(h)  # sum the partial A x
            return out + self.scale * F.linear(h, self.lora_B), bias

    return LoraLinear


def _in_out(target: str, config: Any) -> tuple[int, int]:
    """(fan in, fan out) of the whole (unsplit) megatron weight ``target`` adapts."""
    h, ffn, hd = config.hidden_size, config.ffn_hidden_size, config.kv_channels
    q = config.num_attention_heads * hd
    return {
        "linear_qkv": (h, q + 2 * config.num_query_groups * hd),
        "linear_proj": (q, h),
        "linear_fc1": (h, 2 * ffn if config.gated_linear_unit else ffn),
        "linear_fc2": (ffn, h),
    }[target]


def inject(
    model: Any,
    *,
    r: int,
    alpha: float,
    dropout: float,
    targets: Sequence[str],
    seed: int,
) -> int:
    """Freeze ``model`` (a GPTModel of this rank's stage, base weights loaded) and wrap its
    ``targets`` in every decoder layer it holds; return the number of wrapped layers."""
    from megatron.core import parallel_state

    targets = check_targets(targets)
    if r < 1:
        raise UserError(f"must be >= 1, got {r}", field="--rank")
    for p in model.parameters():
        p.requires_grad_(False)
    cls = _lora_linear_class()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    config = model.config
    n = 0
    for layer in model.decoder.layers:
        index = layer.layer_number - 1  # global, 0-based (megatron's offset for this stage)
        for target in targets:
            parent = getattr(layer, TARGETS[target][0])
            base = getattr(parent, target)
            fan_in, fan_out = _in_out(target, config)
            wrapped = cls(
                base,
                kind=TARGETS[target][1],
                in_features=fan_in,
                out_features=fan_out,
                r=r,
                scale=alpha / r,
                dropout=dropout,
                tp=tp,
                tp_rank=tp_rank,
                init_seed=_seed_for(seed, module_key(index, target)),
            )
            setattr(parent, target, wrapped)
            n += 1
    return n


def local_adapter(model: Any) -> list[tuple[str, str, int, Any]]:
    """This rank's LoRA tensors: (megatron key, how it is split: "dim0" / "dim1" /
    "gate_up" / "replicated", tensor-parallel rank, CPU tensor)."""
    from megatron.core import parallel_state

    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    cls_name = "LoraLinear"
    out = []
    for layer in model.decoder.layers:
        index = layer.layer_number - 1
        for target, (parent_name, kind) in TARGETS.items():
            mod = getattr(getattr(layer, parent_name), target)
            if type(mod).__name__ != cls_name:
                continue
            key = module_key(index, target)
            gated = target == "linear_fc1" and model.config.gated_linear_unit
            if kind == "column":
                a_split, b_split = "replicated", ("gate_up" if gated else "dim0")
            else:
                a_split, b_split = "dim1", "replicated"
            for name, split in (("lora_A", a_split), ("lora_B", b_split)):
                t = getattr(mod, name).detach().to("cpu").clone()
                out.append((f"{key}.{name}.weight", split, tp_rank, t))
    return out


def assemble(pieces: Sequence[tuple[str, str, int, Any]]) -> dict[str, Any]:
    """Global tensors from every rank's ``local_adapter`` pieces (pure; duplicates from
    data-parallel replicas are dropped): slices joined in tensor-parallel rank order."""
    import torch

    by_key: dict[str, dict[int, tuple[str, Any]]] = {}
    for key, split, tp_rank, t in pieces:
        by_key.setdefault(key, {}).setdefault(tp_rank, (split, t))
    out: dict[str, Any] = {}
    for key in sorted(by_key, key=_natural):
        ranks = by_key[key]
        split = ranks[min(ranks)][0]
        parts = [ranks[i][1] for i in sorted(ranks)]
        if split == "replicated":
            out[key] = parts[0]
        elif split == "dim0":
            out[key] = torch.cat(parts, dim=0)
        elif split == "dim1":
            out[key] = torch.cat(parts, dim=1)
        else:  # gate_up: each rank holds [gate_r; up_r]
            halves = [p.chunk(2, dim=0) for p in parts]
            out[key] = torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
        out[key] = out[key].contiguous()
    return out


def _natural(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def gather_adapter(model: Any) -> dict[str, Any] | None:
    """The whole adapter on rank 0 (None on the others); collective over all ranks."""
    import torch

    pieces = local_adapter(model)
    d = torch.distributed
    if not d.is_initialized() or d.get_world_size() == 1:
        return assemble(pieces)
    gathered: list[Any] | None = [None] * d.get_world_size() if d.get_rank() == 0 else None
    d.gather_object(pieces, gathered, dst=0)
    if gathered is None:
        return None
    return assemble([p for rank_pieces in gathered for p in rank_pieces])


def local_slice(t: Any, split: str, tp: int, tp_rank: int) -> Any:
    """This tensor-parallel rank's slice of a global LoRA tensor (inverse of ``assemble``)."""
    if split == "replicated" or tp == 1:
        return t
    if split == "dim0":
        return t.chunk(tp, dim=0)[tp_rank]
    if split == "dim1":
        return t.chunk(tp, dim=1)[tp_rank]
    import torch

    gate, up = t.chunk(2, dim=0)  # gate_up: [gate; up], each half split over the ranks
    return torch.cat([gate.chunk(tp, dim=0)[tp_rank], up.chunk(tp, dim=0)[tp_rank]])


def load_adapter(model: Any, tensors: dict[str, Any]) -> int:
    """Copy a global adapter (``gather_adapter``'s, or adapter.safetensors) into the wrapped
    layers of this rank's ``model``; every wrapped layer must find its tensors. Returns the
    number of tensors loaded."""
    import torch
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    n = 0
    with torch.no_grad():
        for key, split, _, local in local_adapter(model):
            if key not in tensors:
                raise UserError(f"the adapter has no {key}", field="adapter")
            t = tensors[key]
            part = local_slice(t, split, tp, tp_rank)
            if tuple(part.shape) != tuple(local.shape):
                raise UserError(
                    f"{key}: shape {list(t.shape)} does not fit this model (rank slice "
                    f"{list(part.shape)}, expected {list(local.shape)})",
                    field="adapter",
                )
            _param(model, key).copy_(part)
            n += 1
    return n


def _param(model: Any, key: str) -> Any:
    """The LoRA parameter of ``model`` a global key names (layer index mapped to this stage's
    module)."""
    parts = key.split(".")
    index, parent, target, name = int(parts[2]), parts[3], parts[4], parts[5]
    for layer in model.decoder.layers:
        if layer.layer_number - 1 == index:
            return getattr(getattr(getattr(layer, parent), target), name)
    raise KeyError(key)
