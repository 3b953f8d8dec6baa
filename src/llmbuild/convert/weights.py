"""Pure tensor functions of HF <-> megatron-core weight conversion (no I/O).

Megatron's fused QKV weight keeps, for each query group g in order, that group's query heads,
then its key head, then its value head::

    [q(g0,h0) .. q(g0,h{n-1}) | k(g0) | v(g0) | q(g1,h0) .. | k(g1) | v(g1) | ...]

each block ``head_dim`` rows; so a tensor-parallel split along dim 0 hands each rank whole
groups. The SwiGLU ``linear_fc1`` is ``[gate; up]`` stacked along dim 0 (global tensor; megatron
splits each half across tensor-parallel ranks, see ``tp_shard``).

Every function takes torch tensors or numpy arrays (``arrays``: the converter's, no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmbuild.convert import arrays as A

if TYPE_CHECKING:
    import torch


def fuse_qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_heads: int,
    num_groups: int,
    head_dim: int,
) -> torch.Tensor:
    """HF q/k/v projections (weights [out, in] or biases [out]) -> megatron linear_qkv."""
    per = num_heads // num_groups
    tail = q.shape[1:]
    qg = q.reshape(num_groups, per * head_dim, *tail)
    kg = k.reshape(num_groups, head_dim, *tail)
    vg = v.reshape(num_groups, head_dim, *tail)
    return A.cat([qg, kg, vg], dim=1).reshape((num_heads + 2 * num_groups) * head_dim, *tail)


def split_qkv(
    qkv: torch.Tensor, *, num_heads: int, num_groups: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of ``fuse_qkv``."""
    per = num_heads // num_groups
    tail = qkv.shape[1:]
    g = qkv.reshape(num_groups, (per + 2) * head_dim, *tail)
    q = g[:, : per * head_dim].reshape(num_heads * head_dim, *tail)
    k = g[:, per * head_dim : (per + 1) * head_dim].reshape(num_groups * head_dim, *tail)
    v = g[:, (per + 1) * head_dim :].reshape(num_groups * head_dim, *tail)
    return A.contiguous(q), A.contiguous(k), A.contiguous(v)


def fuse_gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return A.cat([gate, up], dim=0)


def split_gate_up(fc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gate, up = A.chunk(fc1, 2, dim=0)
    return A.contiguous(gate), A.contiguous(up)


def pad_vocab(w: torch.Tensor, padded: int) -> torch.Tensor:
    """Append zero rows up to ``padded`` (megatron's padded vocabulary)."""
    if w.shape[0] > padded:
        raise ValueError(f"vocabulary {w.shape[0]} > padded size {padded}")
    if w.shape[0] == padded:
        return w
    return A.cat([w, A.zeros_like_rows(w, padded - w.shape[0])], dim=0)


def unpad_vocab(w: torch.Tensor, vocab: int) -> torch.Tensor:
    return A.contiguous(w[:vocab])


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


# --------------------------------------------------------------------------- tensor parallel
# The parallel kind of each megatron weight decides how a global tensor splits across
# tensor-parallel ranks (used when a rank loads its shard of a global state dict).

COLUMN, ROW, REPLICATED = "column", "row", "replicated"
VOCAB, QKV, SWIGLU = "vocab", "qkv", "swiglu"


def tp_shard(t: torch.Tensor, kind: str, rank: int, size: int) -> torch.Tensor:
    """This tensor-parallel rank's part of the global tensor ``t``."""
    if size == 1 or kind == REPLICATED:
        return t
    if kind in (COLUMN, VOCAB, QKV):  # QKV: whole groups per rank (group-major layout)
        return A.contiguous(A.chunk(t, size, dim=0)[rank])
    if kind == ROW:
        return A.contiguous(A.chunk(t, size, dim=1)[rank])
    if kind == SWIGLU:
        gate, up = A.chunk(t, 2, dim=0)
        return A.cat([A.chunk(gate, size, dim=0)[rank], A.chunk(up, size, dim=0)[rank]], dim=0)
    raise ValueError(f"unknown parallel kind {kind!r}")


def tp_unshard(parts: list[torch.Tensor], kind: str) -> torch.Tensor:
    """Inverse of ``tp_shard`` over all ranks' parts."""
    if len(parts) == 1 or kind == REPLICATED:
        return parts[0]
    if kind in (COLUMN, VOCAB, QKV):
        return A.cat(parts, dim=0)
    if kind == ROW:
        return A.cat(parts, dim=1)
    if kind == SWIGLU:
        halves = [A.chunk(p, 2, dim=0) for p in parts]
        return A.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    raise ValueError(f"unknown parallel kind {kind!r}")
