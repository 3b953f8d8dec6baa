"""Tensors as numpy arrays, so that converting a checkpoint needs no torch.

A conversion moves bytes: it slices, interleaves and concatenates tensors, and casts them only
when the stored dtype changes. numpy does all of that, and importing it costs a tenth of a
second where ``import torch`` costs two (four on a GPU server, with half a gigabyte of
resident libraries). So hf2mg and mg2hf carry weights as numpy arrays over mapped file bytes.

numpy has no bfloat16: a bfloat16 tensor is a ``uint16`` array of its bits. Nothing here does
arithmetic on them except ``cast``, which rounds exactly as torch does (to nearest even; a NaN
stays a NaN), checked bit for bit against torch in tests/convert/test_arrays.py.

The helpers (``cat``, ``contiguous``, ...) take numpy arrays or torch tensors, so the pure
tensor functions in ``weights`` serve both the converter and the tests. ``Cat`` is a
concatenation not yet made, and ``region_of`` a region of a tensor or of a ``Cat`` (a view where
it can be): what the torch_dist writer slices its chunks from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# logical dtype name (torch's attribute name) -> the numpy dtype that carries its bytes
NUMPY: dict[str, np.dtype] = {
    "float64": np.dtype("<f8"),
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),  # the bits; see the module docstring
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int16": np.dtype("<i2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}
_LOGICAL = {v: k for k, v in NUMPY.items()}


def is_numpy(t: Any) -> bool:
    return isinstance(t, np.ndarray)


def dtype_name(t: Any) -> str:
    """'bfloat16' for a bfloat16 tensor or a uint16 array (or a dtype of either)."""
    d = t.dtype if hasattr(t, "dtype") else t
    if isinstance(d, np.dtype):
        return _LOGICAL[d.newbyteorder("<") if d.byteorder == ">" else d]
    return str(d).replace("torch.", "")


def itemsize(dtype: str) -> int:
    return NUMPY[dtype].itemsize


def view(raw: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Bytes (a uint8 array) as an array of a logical dtype and shape, without a copy."""
    return raw.view(NUMPY[dtype]).reshape(shape)


def cat(parts: list[Any], dim: int = 0) -> Any:
    if is_numpy(parts[0]):
        return np.concatenate(parts, axis=dim)
    import torch

    return torch.cat(parts, dim=dim)


def contiguous(t: Any) -> Any:
    if is_numpy(t):
        return np.ascontiguousarray(t)
    return t.contiguous()


def chunk(t: Any, n: int, dim: int = 0) -> list[Any]:
    """``n`` equal views along ``dim`` (the size divides; megatron's splits always do)."""
    if is_numpy(t):
        return np.split(t, n, axis=dim)
    return list(t.chunk(n, dim=dim))


def zeros_like_rows(t: Any, rows: int) -> Any:
    """Zeros of ``t``'s dtype with ``rows`` rows and ``t``'s other dims (all-zero bits are a
    zero in every dtype here, bfloat16 included)."""
    if is_numpy(t):
        return np.zeros((rows, *t.shape[1:]), dtype=t.dtype)
    return t.new_zeros(rows, *t.shape[1:])


def cast(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` (an array of a logical dtype, see ``NUMPY``) in ``dtype``: itself when the dtype
    is already that, else a new array converted as ``torch.Tensor.to`` converts."""
    src = dtype_name(a)
    if src == dtype:
        return a
    if src == "bfloat16":
        a, src = _bf16_to_f32(a), "float32"
    with np.errstate(over="ignore"):  # out of range becomes inf, as in torch
        if dtype == "bfloat16":
            return _f32_to_bf16(a.astype(np.float32) if src != "float32" else a)
        return a.astype(NUMPY[dtype])


BLOCK = 1 << 22  # elements per step of a bfloat16 cast: bounded temporaries, cache-sized


def _blockwise(src: np.ndarray, out: np.ndarray, step: Any) -> np.ndarray:
    """``out`` (a new array of ``src``'s shape) filled by ``step(block of src, block of out)``
    over the flattened arrays, BLOCK elements at a time."""
    flat_in, flat_out = src.reshape(-1), out.reshape(-1)
    for i in range(0, flat_in.size, BLOCK):
        step(flat_in[i : i + BLOCK], flat_out[i : i + BLOCK])
    return out


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    def step(b: np.ndarray, o: np.ndarray) -> None:
        o.view(np.uint32)[:] = b
        o.view(np.uint32)[:] <<= 16

    bits = np.ascontiguousarray(bits)
    return _blockwise(bits, np.empty(bits.shape, np.float32), step)


def _f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch does; a NaN becomes the quiet NaN 0x7FC0 (torch's own
    NaN bits differ between its scalar and vector code: only NaN-ness is kept)."""

    def step(v: np.ndarray, o: np.ndarray) -> None:
        bits = v.view(np.uint32)
        r = bits >> 16
        r &= 1
        r += 0x7FFF
        r += bits  # wraps only for NaN bit patterns, replaced below
        r >>= 16
        o[:] = r
        nan = np.isnan(v)
        if nan.any():
            o[nan] = 0x7FC0

    x = np.ascontiguousarray(x, dtype=np.float32)
    return _blockwise(x, np.empty(x.shape, np.uint16), step)


def to_numpy(t: Any) -> np.ndarray:
    """A torch tensor's bytes as a numpy array of the same logical dtype (shares memory when
    the tensor is on the CPU and contiguous); a numpy array is returned as it is."""
    if is_numpy(t):
        return t
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def to_torch(a: np.ndarray) -> Any:
    """A numpy array of a logical dtype as a torch tensor of that dtype (shares memory)."""
    import torch

    name = dtype_name(a)
    if name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


Region = tuple[tuple[int, int], ...]  # (start, length) per axis


@dataclass
class Cat:
    """Tensors concatenated along dim 0, not yet copied: a region inside one part is a view of
    it (SwiGLU's gate and up chunks, the vocabulary's real rows), so writing a chunk copies
    nothing that does not need copying."""

    parts: list[Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return (sum(p.shape[0] for p in self.parts), *self.parts[0].shape[1:])


def region_of(t: Any, region: Region) -> Any:
    """``t[region]`` for a tensor (numpy or torch) or a ``Cat`` (a view where possible)."""
    if not isinstance(t, Cat):
        return t[tuple(slice(s, s + n) for s, n in region)]
    (start, length), rest = region[0], tuple(slice(s, s + n) for s, n in region[1:])
    pieces, base = [], 0
    for p in t.parts:
        lo, hi = max(start, base), min(start + length, base + p.shape[0])
        if lo < hi:
            pieces.append(p[(slice(lo - base, hi - base), *rest)])
        base += p.shape[0]
    return pieces[0] if len(pieces) == 1 else cat(pieces, dim=0)
