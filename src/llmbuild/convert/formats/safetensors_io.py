"""Safetensors read and written one tensor at a time, without a whole-model dict.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian header length
``n``, ``n`` bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}``, then the tensors' bytes, contiguous, offsets relative to the
end of the header. Reading a tensor maps just that tensor's pages (``map_array``: a private,
copy-on-write mapping that lives as long as the tensor does), so nothing is copied until a
conversion has to, and the resident memory is the tensors it holds, not a mapped file; the
whole file is validated (header, offsets, size) before anything is read, so a truncated shard is
one clear error up front, not a crash half way through a conversion.

Writing plans every shard's header from the tensors' names, dtypes and shapes first, then
streams the bytes of each tensor as it is produced (``write_sharded``).
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmbuild.convert import arrays as A
from llmbuild.errors import UserError

if TYPE_CHECKING:
    import torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
MAX_HEADER = 100 * 1024 * 1024

# safetensors dtype names <-> torch dtype attribute names
_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def torch_dtype(st_name: str) -> str:
    """'bfloat16' for the safetensors dtype 'BF16'."""
    return _DTYPES[st_name]


def st_dtype(torch_dtype: Any) -> str:
    """'BF16' for torch.bfloat16 (or the string 'bfloat16')."""
    name = str(torch_dtype).replace("torch.", "")
    if name not in _NAMES:
        raise ValueError(f"dtype {name} has no safetensors name")
    return _NAMES[name]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int  # absolute file offsets
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Every tensor's entry (absolute offsets) and the ``__metadata__``; UserError if the file
    is not a complete safetensors file (short header, bad JSON, data cut short)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise UserError(f"not a safetensors file ({size} bytes)", path=path)
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            raise UserError(
                f"truncated or not safetensors (header of {n} bytes, file of {size})", path=path
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"unreadable safetensors header ({exc})", path=path) from exc
    meta = header.pop("__metadata__", None) or {}
    start = 8 + n
    out: dict[str, TensorInfo] = {}
    end_max = 0
    for name, e in header.items():
        try:
            dtype, shape, (b, en) = e["dtype"], tuple(int(x) for x in e["shape"]), e["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"bad header entry for {name!r}", path=path) from exc
        if dtype not in _DTYPES:
            raise UserError(f"tensor {name!r} has unsupported dtype {dtype}", path=path)
        numel = 1
        for d in shape:
            numel *= d
        if en - b != numel * _ITEMSIZE[dtype] or b < 0:
            raise UserError(f"tensor {name!r}: offsets do not match its shape", path=path)
        out[name] = TensorInfo(name, dtype, shape, start + b, start + en)
        end_max = max(end_max, en)
    if start + end_max > size:
        raise UserError(
            f"truncated: the header needs {start + end_max} bytes, the file has {size} "
            "(re-download or re-copy it)",
            path=path,
        )
    return out, meta


def map_array(f: Any, begin: int, nbytes: int) -> np.ndarray:
    """``nbytes`` at ``begin`` of an open file as a uint8 array over a private mapping of just
    those pages: no copy, writes stay in this process, unmapped when the last array (or view)
    using it is gone."""
    if nbytes == 0:
        return np.empty(0, dtype=np.uint8)
    start = begin - begin % mmap.ALLOCATIONGRANULARITY
    mm = mmap.mmap(f.fileno(), begin + nbytes - start, offset=start, access=mmap.ACCESS_COPY)
    return np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=begin - start)


def read_array(f: Any, info: TensorInfo) -> np.ndarray:
    """One tensor from an open binary file as a numpy array (``arrays``), mapped."""
    return A.view(map_array(f, info.begin, info.nbytes), _DTYPES[info.dtype], info.shape)


def read_tensor(f: Any, info: TensorInfo) -> torch.Tensor:
    """``read_array`` as a torch tensor (sharing the mapping)."""
    return A.to_torch(read_array(f, info))


class LazyHFWeights(Mapping[str, "torch.Tensor"]):
    """The safetensors of an HF directory as a read-only mapping; each lookup reads one tensor.

    Opening validates every shard (the index's files exist, headers parse, no file is cut short,
    every tensor the index names is in its shard), so errors come before any output."""

    def __init__(self, hf_dir: str | Path) -> None:
        self.dir = Path(hf_dir)
        index, single = self.dir / INDEX, self.dir / SINGLE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError("weight_map is not an object")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UserError(
                    f"unreadable index ({exc})", path=index, field="weight_map"
                ) from exc
        elif single.is_file():
            weight_map = None
        else:
            hint = (
                " (found pytorch_model.bin: re-save it with safe_serialization=True)"
                if (self.dir / "pytorch_model.bin").exists()
                else ""
            )
            raise UserError(f"no {SINGLE} or {INDEX}{hint}", path=self.dir)
        files = sorted(set(weight_map.values())) if weight_map is not None else [SINGLE]
        self.infos: dict[str, TensorInfo] = {}
        self.file_of: dict[str, Path] = {}
        for fname in files:
            path = self.dir / fname
            if not path.is_file():
                raise UserError(
                    f"shard {fname} named in {INDEX} is missing", path=path, field="weight_map"
                )
            infos, _ = read_header(path)
            for name, info in infos.items():
                self.infos[name] = info
                self.file_of[name] = path
        if weight_map is not None:
            for name, fname in weight_map.items():
                if self.file_of.get(name) != self.dir / fname:
                    raise UserError(
                        f"tensor {name!r} is not in {fname} as {INDEX} says",
                        path=self.dir / fname,
                    )
        self._files: dict[Path, Any] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> LazyHFWeights:
        """One safetensors file (validated) as a lazy mapping."""
        path = Path(path)
        obj = cls.__new__(cls)
        obj.dir = path.parent
        obj.infos, _ = read_header(path)
        obj.file_of = {k: path for k in obj.infos}
        obj._files = {}
        return obj

    def _file(self, key: str) -> Any:
        if key not in self.infos:
            raise UserError(f"missing tensor {key!r}", path=self.dir)
        path = self.file_of[key]
        if path not in self._files:
            self._files[path] = path.open("rb", buffering=0)
        return self._files[path]

    def __getitem__(self, key: str) -> torch.Tensor:
        return read_tensor(self._file(key), self.infos[key])

    def array(self, key: str) -> np.ndarray:
        """The tensor as a numpy array (``arrays``; no torch), mapped."""
        return read_array(self._file(key), self.infos[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> LazyHFWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # torch name, e.g. "bfloat16"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = _ITEMSIZE[st_dtype(self.dtype)]
        for d in self.shape:
            n *= d
        return n


class Rows(list):
    """One tensor given as blocks of rows (views, e.g. of mapped checkpoint chunks), written
    one after the other: the whole tensor is never assembled in memory."""

    @property
    def shape(self) -> tuple[int, ...]:
        return (sum(p.shape[0] for p in self), *self[0].shape[1:])

    @property
    def dtype(self) -> Any:
        return self[0].dtype

    def tensor(self) -> Any:
        return self[0] if len(self) == 1 else A.cat(list(self), dim=0)


def plan_shards(specs: list[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive tensors into shards of at most ``max_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    if n == 1:
        return [SINGLE]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def _header(specs: list[TensorSpec], metadata: Mapping[str, str]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": dict(metadata)}
    off = 0
    for s in specs:
        entries[s.name] = {
            "dtype": st_dtype(s.dtype),
            "shape": list(s.shape),
            "data_offsets": [off, off + s.nbytes],
        }
        off += s.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # 8-byte alignment of the data, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw


def write_sharded(
    out_dir: Path,
    specs: list[TensorSpec],
    tensors: Iterable[torch.Tensor | Rows],
    *,
    max_shard_bytes: int,
    metadata: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    written: Callable[[Path, int], None] | None = None,
) -> list[str]:
    """Write ``tensors`` (produced in the order of ``specs``, one at a time) as transformers'
    safetensors layout: one ``model.safetensors``, or shards plus ``model.safetensors.index.json``.
    Each tensor (a numpy array of ``arrays``, or a torch tensor) is checked against its spec;
    returns the file names. ``written(path, size)``: told after each tensor how many bytes a
    shard has on disk so far."""
    plan = plan_shards(specs, max_shard_bytes)
    names = shard_names(len(plan))
    it = iter(tensors)
    weight_map: dict[str, str] = {}
    done = 0
    for fname, shard in zip(names, plan, strict=True):
        with (out_dir / fname).open("wb") as f:
            f.write(_header(shard, metadata or {"format": "pt"}))
            for s in shard:
                t = next(it)
                if tuple(t.shape) != s.shape or A.dtype_name(t) != s.dtype:
                    raise ValueError(f"{s.name}: produced {t.dtype} {tuple(t.shape)}, planned {s}")
                for part in t if isinstance(t, Rows) else [t]:
                    flat = np.ascontiguousarray(A.to_numpy(part)).reshape(-1)
                    if flat.size:
                        f.write(memoryview(flat.view(np.uint8)))
                    del part, flat
                del t
                if written is not None:
                    f.flush()
                    written(out_dir / fname, f.tell())
                weight_map[s.name] = fname
                done += s.nbytes
                if progress is not None:
                    progress(done)
    if next(it, None) is not None:
        raise ValueError("more tensors than planned")
    if len(names) > 1:
        total = sum(s.nbytes for s in specs)
        (out_dir / INDEX).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
            + "\n"
        )
    return names
