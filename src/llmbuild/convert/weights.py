"""The ways HF tensors combine into one megatron-core tensor, each one object (no I/O).

A key map (``archs``) says, for every megatron weight, which HF tensors it is made of and how:

- ``REPLICATED``, ``COLUMN``, ``ROW``: a copy, stored whole by tensor-parallel rank 0 or split
  across ranks along its rows or its columns;
- ``QKV``: megatron's fused QKV. For each query group g in order, that group's query heads,
  then its key head, then its value head::

    [q(g0,h0) .. q(g0,h{n-1}) | k(g0) | v(g0) | q(g1,h0) .. | k(g1) | v(g1) | ...]

  each block ``head_dim`` rows; so a tensor-parallel split along dim 0 hands each rank whole
  groups;
- ``GATE_UP``: SwiGLU's ``linear_fc1``, ``[gate; up]`` along dim 0; each half is split across
  tensor-parallel ranks (megatron's swiglu sharded factory);
- ``VOCAB``: the embedding / output layer, zero rows appended up to megatron's padded
  vocabulary, split along the rows.

Each object holds everything the converter does with its kind of weight: ``megatron_shape``,
the pure ``combine`` (HF tensors -> megatron tensor) and its inverse ``split``, the streaming
forms (``stream_in``: what hf2mg writes chunks from, a view where it can; ``stream_out``: the HF
tensors mg2hf reads from the stored chunks, never assembling what it need not), and
``regions``: the chunk of the global tensor each tensor-parallel rank stores. A new kind of
weight is one more class here; a new architecture only uses them (``archs``).

The tensor functions take torch tensors or numpy arrays (``arrays``: the converter's, no torch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from llmbuild.convert import arrays as A

if TYPE_CHECKING:
    from llmbuild.mcore.description import ModelArgs

Shape = tuple[int, ...]


def fuse_qkv(q: Any, k: Any, v: Any, *, num_heads: int, num_groups: int, head_dim: int) -> Any:
    """HF q/k/v projections (weights [out, in] or biases [out]) -> megatron linear_qkv."""
    per = num_heads // num_groups
    tail = q.shape[1:]
    qg = q.reshape(num_groups, per * head_dim, *tail)
    kg = k.reshape(num_groups, head_dim, *tail)
    vg = v.reshape(num_groups, head_dim, *tail)
    return A.cat([qg, kg, vg], dim=1).reshape((num_heads + 2 * num_groups) * head_dim, *tail)


def split_qkv(qkv: Any, *, num_heads: int, num_groups: int, head_dim: int) -> tuple[Any, Any, Any]:
    """Inverse of ``fuse_qkv``."""
    per = num_heads // num_groups
    tail = qkv.shape[1:]
    g = qkv.reshape(num_groups, (per + 2) * head_dim, *tail)
    q = g[:, : per * head_dim].reshape(num_heads * head_dim, *tail)
    k = g[:, per * head_dim : (per + 1) * head_dim].reshape(num_groups * head_dim, *tail)
    v = g[:, (per + 1) * head_dim :].reshape(num_groups * head_dim, *tail)
    return A.contiguous(q), A.contiguous(k), A.contiguous(v)


def fuse_gate_up(gate: Any, up: Any) -> Any:
    return A.cat([gate, up], dim=0)


def split_gate_up(fc1: Any) -> tuple[Any, Any]:
    gate, up = A.chunk(fc1, 2, dim=0)
    return A.contiguous(gate), A.contiguous(up)


def pad_vocab(w: Any, padded: int) -> Any:
    """Append zero rows up to ``padded`` (megatron's padded vocabulary)."""
    if w.shape[0] > padded:
        raise ValueError(f"vocabulary {w.shape[0]} > padded size {padded}")
    if w.shape[0] == padded:
        return w
    return A.cat([w, A.zeros_like_rows(w, padded - w.shape[0])], dim=0)


def unpad_vocab(w: Any, vocab: int) -> Any:
    return A.contiguous(w[:vocab])


def _split(shape: Shape, tp: int, axis: int, start: int = 0, length: int | None = None):
    """``tp`` equal regions of ``shape`` along ``axis`` (within ``[start, start + length)``)."""
    full = tuple((0, n) for n in shape)
    step = (shape[axis] if length is None else length) // tp
    return [
        tuple((start + r * step, step) if a == axis else full[a] for a in range(len(shape)))
        for r in range(tp)
    ]


class Stored(Protocol):
    """The stored chunks of one megatron tensor, as mg2hf reads them (see ``stream_out``)."""

    def rows(self, shape: Shape, row: int = 0) -> Any:
        """``shape`` of the tensor from row ``row``: the stored chunks' views where they tile
        it by rows (a ``safetensors_io.Rows``), else one assembled array."""

    def whole(self, shape: Shape) -> Any:
        """``shape`` of the tensor from row 0, assembled into one array."""


class Combination:
    """One way HF tensors become one megatron tensor; the defaults are a copy of one tensor,
    split across tensor-parallel ranks along its rows."""

    name = "copy"

    def megatron_shape(self, hf: Sequence[Shape], args: ModelArgs) -> Shape:
        return hf[0]

    def combine(self, parts: Sequence[Any], args: ModelArgs) -> Any:
        return parts[0]

    def split(self, t: Any, args: ModelArgs) -> list[Any]:
        return [t]

    def stream_in(self, parts: Sequence[Any], args: ModelArgs) -> Any:
        """The megatron tensor as hf2mg writes its chunks from it (``arrays.region_of``)."""
        return self.combine(parts, args)

    def stream_out(self, stored: Stored, shape: Shape, args: ModelArgs) -> Iterator[Any]:
        """The HF tensors, in key-map order, from the stored megatron tensor of ``shape``."""
        yield stored.rows(shape)

    def regions(self, shape: Shape, tp: int) -> list[tuple[int, A.Region]]:
        """(tensor-parallel rank, region of the global tensor) of each chunk megatron stores."""
        return list(enumerate(_split(shape, tp, 0)))

    def __repr__(self) -> str:
        return f"weights.{self.name.upper()}"


class _Column(Combination):
    name = "column"


class _Replicated(Combination):
    name = "replicated"

    def regions(self, shape: Shape, tp: int) -> list[tuple[int, A.Region]]:
        return [(0, tuple((0, n) for n in shape))]  # a replica: tensor-parallel rank 0 stores it


class _Row(Combination):
    name = "row"

    def regions(self, shape: Shape, tp: int) -> list[tuple[int, A.Region]]:
        return list(enumerate(_split(shape, tp, 1)))


class _Qkv(Combination):
    name = "qkv"

    def megatron_shape(self, hf: Sequence[Shape], args: ModelArgs) -> Shape:
        return (sum(s[0] for s in hf), *hf[0][1:])

    def combine(self, parts: Sequence[Any], args: ModelArgs) -> Any:
        q, k, v = parts
        return fuse_qkv(q, k, v, **_heads(args))

    def split(self, t: Any, args: ModelArgs) -> list[Any]:
        return list(split_qkv(t, **_heads(args)))

    def stream_out(self, stored: Stored, shape: Shape, args: ModelArgs) -> Iterator[Any]:
        t = stored.whole(shape)
        parts = self.split(t, args)
        del t
        yield from parts


class _GateUp(Combination):
    name = "gate_up"

    def megatron_shape(self, hf: Sequence[Shape], args: ModelArgs) -> Shape:
        return (sum(s[0] for s in hf), *hf[0][1:])

    def combine(self, parts: Sequence[Any], args: ModelArgs) -> Any:
        return fuse_gate_up(*parts)

    def split(self, t: Any, args: ModelArgs) -> list[Any]:
        return list(split_gate_up(t))

    def stream_in(self, parts: Sequence[Any], args: ModelArgs) -> Any:
        return A.Cat(list(parts))  # every stored chunk lies in one of the halves: views

    def stream_out(self, stored: Stored, shape: Shape, args: ModelArgs) -> Iterator[Any]:
        half = (shape[0] // 2, *shape[1:])  # gate rows, then up rows, each read on its own
        yield stored.rows(half)
        yield stored.rows(half, row=half[0])

    def regions(self, shape: Shape, tp: int) -> list[tuple[int, A.Region]]:
        half = shape[0] // 2
        gate, up = _split(shape, tp, 0, 0, half), _split(shape, tp, 0, half, half)
        return [x for r in range(tp) for x in ((r, gate[r]), (r, up[r]))]


class _Vocab(Combination):
    name = "vocab"

    def megatron_shape(self, hf: Sequence[Shape], args: ModelArgs) -> Shape:
        return (args.padded_vocab_size, *hf[0][1:])

    def combine(self, parts: Sequence[Any], args: ModelArgs) -> Any:
        return pad_vocab(parts[0], args.padded_vocab_size)

    def split(self, t: Any, args: ModelArgs) -> list[Any]:
        return [unpad_vocab(t, args.vocab_size)]

    def stream_in(self, parts: Sequence[Any], args: ModelArgs) -> Any:
        if args.padded_vocab_size > args.vocab_size:  # the real rows stay views
            pad = A.zeros_like_rows(parts[0], args.padded_vocab_size - args.vocab_size)
            return A.Cat([parts[0], pad])
        return parts[0]

    def stream_out(self, stored: Stored, shape: Shape, args: ModelArgs) -> Iterator[Any]:
        yield stored.rows((args.vocab_size, *shape[1:]))  # the real rows only: no unpadding


def _heads(args: ModelArgs) -> dict[str, int]:
    return {
        "num_heads": args.num_attention_heads,
        "num_groups": args.num_query_groups,
        "head_dim": args.kv_channels,
    }


REPLICATED = _Replicated()
COLUMN = _Column()
ROW = _Row()
QKV = _Qkv()
GATE_UP = _GateUp()
VOCAB = _Vocab()
