"""megatron-core's torch_dist checkpoint, written and read chunk by chunk without building a model.

A torch_dist checkpoint (``iter_XXXXXXX/``) is a torch.distributed.checkpoint (DCP) directory:
``.metadata`` (a pickled ``Metadata``: every tensor's global shape and the chunks it is stored
in, and where each chunk lies in which ``.distcp`` file), the ``__<rank>_0.distcp`` files (each
chunk a ``torch.save`` record), ``common.pt`` (the non-tensor state) and ``metadata.json``
(megatron's backend marker). megatron-core's sharded keys stack the layers on a leading axis::

    decoder.layers.self_attention.linear_qkv.weight     [num_layers, qkv_rows, hidden]

and every layer of every tensor-parallel rank is one chunk. This module writes exactly that, as
megatron-core 0.16.1 writes it for a GPTModel with the local layer spec at ``tp`` x ``pp`` (one
file per rank, a tensor-parallel rank's slice per chunk, SwiGLU's fc1 as separate gate and up
chunks), producing one global tensor at a time, so a conversion holds one tensor, never the
model. megatron-core loads it at any TP/PP (it reshards torch_dist on load).

``TorchDistReader`` reads any region of a tensor from the chunks that overlap it, and infers the
tensor/pipeline-parallel layout a checkpoint was written with from its chunks and files.

``test_parity.py`` checks this layout against megatron-core's own ``sharded_state_dict``.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmbuild.convert import arrays as A
from llmbuild.convert import registry as R
from llmbuild.convert import torch_record as TR
from llmbuild.convert import weights as W
from llmbuild.errors import UserError

if TYPE_CHECKING:
    from llmbuild.mcore.model import ModelArgs

LAYERS = "decoder.layers."
# megatron.core.models.gpt.gpt_layer_specs.get_gpt_layer_local_spec: sharded_state_dict_keys_map
SHARDED_RENAMES = {
    "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
}
# Modules whose (empty) ``_extra_state`` megatron saves as a ShardedObject per layer.
EXTRA_STATE_MODULES = (
    "self_attention.linear_proj",
    "self_attention.linear_qkv",
    "mlp.linear_fc1",
    "mlp.linear_fc2",
)
METADATA_JSON = {
    "sharded_backend": "torch_dist",
    "sharded_backend_version": 1,
    "common_backend": "torch",
    "common_backend_version": 1,
}
CHECKPOINT_VERSION = 3.0
# The tensor whose chunks tell the layout: row-parallel (split on its last axis), in every layer.
PROBE = "decoder.layers.self_attention.linear_proj.weight"


def sharded_key(state_key: str) -> tuple[str, int | None]:
    """``decoder.layers.3.input_layernorm.weight`` ->
    (``decoder.layers.self_attention.linear_qkv.layer_norm_weight``, 3)."""
    if not state_key.startswith(LAYERS):
        return state_key, None
    idx, rest = state_key[len(LAYERS) :].split(".", 1)
    for old, new in SHARDED_RENAMES.items():
        if rest.startswith(old):
            rest = new + rest[len(old) :]
            break
    return LAYERS + rest, int(idx)


Region = tuple[tuple[int, int], ...]  # (start, length) per axis


def tp_regions(kind: str, shape: tuple[int, ...], tp: int) -> list[tuple[int, Region]]:
    """(tensor-parallel rank, region of the global tensor) of each chunk megatron stores."""
    full = tuple((0, n) for n in shape)

    def split(axis: int, start: int, length: int) -> list[Region]:
        step = length // tp
        return [
            tuple((start + r * step, step) if a == axis else full[a] for a in range(len(shape)))
            for r in range(tp)
        ]

    if kind == W.REPLICATED:
        return [(0, full)]
    if kind in (W.COLUMN, W.VOCAB, W.QKV):
        return list(enumerate(split(0, 0, shape[0])))
    if kind == W.ROW:
        return list(enumerate(split(1, 0, shape[1])))
    if kind == W.SWIGLU:  # gate then up, each split across ranks (megatron's swiglu factory)
        half = shape[0] // 2
        gate, up = split(0, 0, half), split(0, half, half)
        return [x for r in range(tp) for x in ((r, gate[r]), (r, up[r]))]
    raise ValueError(f"unknown parallel kind {kind!r}")


def stage_layers(num_layers: int, pp: int, split: tuple[int, ...] | None = None) -> list[int]:
    """The pipeline stage of each layer: even split, or ``split`` (layers per stage)."""
    counts = list(split) if split else [num_layers // pp] * pp
    if len(counts) != pp or sum(counts) != num_layers or min(counts) < 1:
        raise UserError(
            f"layer split {counts} does not give {pp} stages of >= 1 layer summing to {num_layers}",
            field="--pp-layers",
        )
    return [s for s, n in enumerate(counts) for _ in range(n)]


@dataclass(frozen=True)
class Chunk:
    fqn: str  # sharded key
    global_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    key: str  # megatron global state-dict key (concrete layer)
    region: Region  # of that key's global tensor
    rank: int  # the writing rank (tp_rank + tp * stage)


@dataclass(frozen=True)
class Layout:
    chunks: list[Chunk]
    objects: list[tuple[str, int]]  # (ShardedObject unique key, writing rank)
    dtypes: dict[str, str]


def layout(
    spec: R.ArchSpec,
    args: ModelArgs,
    tp: int,
    pp: int,
    *,
    dtype: str,
    shapes: dict[str, tuple[int, ...]],
    pp_layers: tuple[int, ...] | None = None,
) -> Layout:
    """Every chunk megatron-core would write for this model at ``tp`` x ``pp`` (data-parallel
    size 1), in the order of the key table, so each global tensor is produced once.

    ``shapes``: the global shape of each megatron key (from the converted tensors' plan).
    """
    stage = stage_layers(args.num_layers, pp, pp_layers)
    table = R.key_table(spec, args)
    chunks: list[Chunk] = []
    for key, (rule, _) in table.items():
        fqn, layer = sharded_key(key)
        shape = shapes[key]
        if layer is None:
            st = pp - 1 if key in ("decoder.final_layernorm.weight", "output_layer.weight") else 0
            prefix_off, prefix_size, gshape = (), (), shape
        else:
            st = stage[layer]
            prefix_off, prefix_size, gshape = (layer,), (1,), (args.num_layers, *shape)
        for r, region in tp_regions(rule.parallel, shape, tp):
            chunks.append(
                Chunk(
                    fqn=fqn,
                    global_shape=gshape,
                    offsets=prefix_off + tuple(s for s, _ in region),
                    sizes=prefix_size + tuple(n for _, n in region),
                    key=key,
                    region=region,
                    rank=r + tp * st,
                )
            )
    objects = [
        (f"{LAYERS}{m}._extra_state/shard_{layer}_{args.num_layers}", tp * stage[layer])
        for layer in range(args.num_layers)
        for m in EXTRA_STATE_MODULES
    ]
    return Layout(chunks, objects, {c.fqn: dtype for c in chunks})


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
    return pieces[0] if len(pieces) == 1 else A.cat(pieces, dim=0)


def _save(f: Any, part: Any, name: str) -> None:
    """One chunk's ``torch.save`` record at ``f``'s position (``torch_record``: no torch; a
    record of 4 GiB or more goes through torch.save itself)."""
    try:
        TR.write_tensor(f, A.to_numpy(part), name)
    except TR.TooLarge:
        import torch

        crc = torch.serialization.get_crc32_options()
        torch.serialization.set_crc32_options(False)
        try:
            torch.save(A.to_torch(A.to_numpy(part)).clone(), f)
        finally:
            torch.serialization.set_crc32_options(crc)


def write(
    iter_dir: Path,
    lay: Layout,
    tensor_of: Callable[[str], Any],
    *,
    iteration: int = 0,
    progress: Callable[[int], None] | None = None,
    written: Callable[[Path, int], None] | None = None,
) -> int:
    """Write ``iter_dir`` (an existing empty directory). ``tensor_of(key)`` gives the global
    megatron tensor of a state-dict key (a numpy array of a logical dtype, see ``arrays``, a
    torch tensor, or a ``Cat`` of them), in the target dtype; it is called once per key, in
    layout order. Returns the bytes of tensor data written. Needs no torch.

    ``written(path, size)``: told after each record that a ``.distcp`` file has ``size``
    bytes on disk so far (the files only grow), e.g. to hash them while writing goes on."""
    from llmbuild.convert.dcp_meta import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        Size,
        StorageInfo,
        TensorProperties,
        TensorStorageMetadata,
        dtype_ref,
        dumps,
    )

    files: dict[int, Any] = {}

    def stream(rank: int) -> tuple[str, Any]:
        name = f"__{rank}_0.distcp"
        if rank not in files:
            files[rank] = (iter_dir / name).open("wb")
        return name, files[rank]

    def told(name: str, f: Any) -> None:
        if written is not None:
            f.flush()
            written(iter_dir / name, f.tell())

    md: dict[str, Any] = {}
    storage: dict[Any, Any] = {}
    nbytes = 0
    current: tuple[str, Any] = ("", None)
    try:
        for c in lay.chunks:
            if current[0] != c.key:
                current = (c.key, None)  # drop the previous tensor before making the next
                current = (c.key, tensor_of(c.key))
            part = region_of(current[1], c.region)
            if len(c.sizes) > len(c.region):
                part = part[None]
            name, f = stream(c.rank)
            off = f.tell()
            _save(f, part, f"{c.fqn}@{c.offsets}")
            meta = md.setdefault(
                c.fqn,
                TensorStorageMetadata(
                    properties=TensorProperties(dtype=dtype_ref(A.dtype_name(part))),
                    size=Size(c.global_shape),
                    chunks=[],
                ),
            )
            index = MetadataIndex(c.fqn, Size(c.offsets), len(meta.chunks))
            meta.chunks.append(ChunkStorageMetadata(offsets=Size(c.offsets), sizes=Size(c.sizes)))
            storage[index] = StorageInfo(name, off, f.tell() - off)
            told(name, f)
            nbytes += part.nbytes
            if progress is not None:
                progress(nbytes)
        current = ("", None)
        for fqn, rank in lay.objects:
            name, f = stream(rank)
            off = f.tell()
            # megatron's serialisation of a list of ShardedObject data
            TR.write_object(f, [None], fqn)
            md[fqn] = BytesStorageMetadata()
            storage[MetadataIndex(fqn)] = StorageInfo(name, off, f.tell() - off)
        for rank, f in files.items():
            told(f"__{rank}_0.distcp", f)
    finally:
        for f in files.values():
            f.close()
    metadata = Metadata(state_dict_metadata=md, storage_data=storage)
    (iter_dir / ".metadata").write_bytes(dumps(metadata))
    with (iter_dir / "common.pt").open("wb") as f:
        TR.write_object(
            f, {"iteration": iteration, "checkpoint_version": CHECKPOINT_VERSION}, "common"
        )
    (iter_dir / "metadata.json").write_text(json.dumps(METADATA_JSON))
    return nbytes


# --------------------------------------------------------------------------- reading


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes at ``offset`` of an open file (what
    ``torch.load`` of one DCP record needs, without reading the record into memory first)."""

    def __init__(self, f: Any, offset: int, length: int) -> None:
        self.f, self.start, self.length, self.pos = f, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, min(self.length, base + pos))
        return self.pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.length - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.start + self.pos)
        got = self.f.readinto(memoryview(b)[:n])
        self.pos += got
        return got


# torch.save's storage classes (pickled by name) -> dtype
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class _StorageType:
    def __init__(self, dtype: str) -> None:
        self.dtype = dtype


class _RecordUnpickler(pickle.Unpickler):
    """The ``data.pkl`` of one ``torch.save``'d tensor, its storage taken from a mapping of the
    record's bytes instead of read into memory. Allows only what a plain tensor pickles to;
    anything else raises ``_NotPlain`` and the record goes to ``torch.load(weights_only)``."""

    def __init__(self, f: Any, storage: Callable[[str, Any, int], Any]) -> None:
        super().__init__(f)
        self.storage = storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise _NotPlain(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _NotPlain(repr(pid))
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise _NotPlain(repr(stype))
        return self.storage(str(key), stype.dtype, int(numel))


class _NotPlain(Exception):
    pass


def _rebuild(storage: np.ndarray, offset: int, size: Any, stride: Any, *_: Any) -> np.ndarray:
    """``storage.as_strided(size, stride, offset)`` on a 1-D array, refusing a view that would
    reach outside the storage."""
    size, stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True) if n > 0)
    if offset < 0 or min(stride, default=0) < 0 or (all(size) and last >= len(storage)):
        raise _NotPlain("a view outside its storage")
    step = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * step for s in stride)
    )


def load_record(f: Any, offset: int, length: int) -> Any:
    """The tensor ``torch.save`` wrote at ``[offset, offset + length)`` of an open ``.distcp``
    file, as a numpy array (``arrays``). A plain tensor (the records DCP and this module
    write) is mapped, not copied: the zip entries are stored uncompressed, so its storage is a
    private mapping of those bytes (``safetensors_io.map_array``), and no torch is imported.
    Anything else goes through ``torch.load(weights_only)`` (its tensors converted)."""
    from llmbuild.convert.safetensors_io import map_array

    window = _Window(f, offset, length)
    try:
        with zipfile.ZipFile(io.BufferedReader(window)) as z:
            infos = {i.filename.split("/", 1)[-1]: i for i in z.infolist()}

        def entry(name: str) -> tuple[int, int]:
            """(file offset, size) of a stored entry's bytes, from its local header (read
            directly: records written without CRC32 must not fail zipfile's check)."""
            zi = infos.get(name)
            if zi is None or zi.compress_type != zipfile.ZIP_STORED:
                raise _NotPlain(name)
            f.seek(offset + zi.header_offset)
            head = f.read(30)
            if len(head) != 30 or head[:4] != b"PK\x03\x04":
                raise _NotPlain(name)
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            start = offset + zi.header_offset + 30 + name_len + extra_len
            if start + zi.file_size > offset + length:
                raise _NotPlain(name)
            return start, zi.file_size

        def raw(name: str) -> bytes:
            start, size = entry(name)
            f.seek(start)
            return f.read(size)

        if "byteorder" in infos and raw("byteorder") != b"little":
            raise _NotPlain("byteorder")

        def storage(key: str, dtype: str, numel: int) -> np.ndarray:
            start, size = entry(f"data/{key}")
            if dtype not in A.NUMPY or size != numel * A.itemsize(dtype):
                raise _NotPlain(key)
            return A.view(map_array(f, start, size), dtype, (numel,))

        out = _RecordUnpickler(io.BytesIO(raw("data.pkl")), storage).load()
        if isinstance(out, np.ndarray):
            return out
    except (_NotPlain, KeyError, zipfile.BadZipFile, pickle.UnpicklingError):
        pass
    import torch

    out = torch.load(
        io.BufferedReader(_Window(f, offset, length)), map_location="cpu", weights_only=True
    )
    return A.to_numpy(out) if isinstance(out, torch.Tensor) else out


class TorchDistReader:
    """Regions of the tensors of one ``iter_XXXXXXX`` directory, read from the chunks."""

    def __init__(self, iter_dir: str | Path) -> None:
        from llmbuild.convert import dcp_meta

        self.dir = Path(iter_dir)
        if not (self.dir / ".metadata").is_file():
            raise UserError("no .metadata: not a torch_dist checkpoint", path=self.dir)
        self.md = dcp_meta.load(self.dir / ".metadata")
        self.chunks: dict[str, list[tuple[Any, Any]]] = {}
        need: dict[str, int] = {}
        for index, info in (self.md.storage_data or {}).items():
            need[info.relative_path] = max(
                need.get(info.relative_path, 0), info.offset + info.length
            )
            if index.offset is not None:
                self.chunks.setdefault(index.fqn, []).append((index, info))
        for name, size in sorted(need.items()):
            path = self.dir / name
            if not path.is_file():
                raise UserError(f"checkpoint file {name} is missing", path=path)
            if path.stat().st_size < size:
                raise UserError(
                    f"checkpoint file {name} is truncated ({path.stat().st_size} bytes, "
                    f"the metadata needs {size})",
                    path=path,
                )
        self._files: dict[str, Any] = {}

    def tensors(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        """fqn -> (global shape, dtype) of every tensor stored (the dtype as ``dcp_meta`` reads
        it: a stand-in whose str is torch's, e.g. "torch.bfloat16")."""
        from llmbuild.convert.dcp_meta import TensorStorageMetadata

        return {
            k: (tuple(v.size), v.properties.dtype)
            for k, v in self.md.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)
        }

    def _load(self, info: Any) -> np.ndarray:
        if info.relative_path not in self._files:
            self._files[info.relative_path] = (self.dir / info.relative_path).open("rb")
        return load_record(self._files[info.relative_path], info.offset, info.length)

    def _overlaps(
        self, fqn: str, offsets: tuple[int, ...], sizes: tuple[int, ...]
    ) -> Iterator[tuple[list[int], list[int], Any, Any]]:
        """(lo, hi, stored chunk, storage info) of every chunk of ``fqn`` overlapping the
        region ``[offsets, offsets + sizes)``; lo/hi bound the overlap, in global indices."""
        if fqn not in self.chunks:
            raise UserError(f"tensor {fqn} is not in the checkpoint", path=self.dir)
        stored = {tuple(c.offsets): c for c in self.md.state_dict_metadata[fqn].chunks}
        for index, info in self.chunks[fqn]:
            chunk = stored[tuple(index.offset)]
            lo = [max(a, b) for a, b in zip(chunk.offsets, offsets, strict=True)]
            hi = [
                min(a + n, b + m)
                for a, n, b, m in zip(chunk.offsets, chunk.sizes, offsets, sizes, strict=True)
            ]
            if all(lo_ < h for lo_, h in zip(lo, hi, strict=True)):
                yield lo, hi, chunk, info

    @staticmethod
    def _within(chunk: Any, lo: list[int], hi: list[int]) -> tuple[slice, ...]:
        return tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, chunk.offsets, strict=True))

    def _dtype(self, fqn: str, dtype: str | None) -> str:
        return dtype or A.dtype_name(self.md.state_dict_metadata[fqn].properties.dtype)

    def read(
        self, fqn: str, offsets: tuple[int, ...], sizes: tuple[int, ...], dtype: str | None = None
    ) -> np.ndarray:
        """The region ``[offsets, offsets + sizes)`` of tensor ``fqn`` (numpy, ``arrays``),
        in ``dtype`` (a name; default: as stored)."""
        pieces = list(self._overlaps(fqn, offsets, sizes))
        dtype = self._dtype(fqn, dtype)
        if not pieces:
            raise UserError(f"no stored chunk covers {fqn} at {offsets}", path=self.dir)
        chunk, info = pieces[0][2:]
        if (tuple(chunk.offsets), tuple(chunk.sizes)) == (tuple(offsets), tuple(sizes)):
            return A.cast(self._load(info), dtype)  # one stored chunk is the region: no copy
        out = np.empty(sizes, dtype=A.NUMPY[dtype])
        for lo, hi, chunk, info in pieces:
            dst = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offsets, strict=True))
            out[dst] = A.cast(self._load(info)[self._within(chunk, lo, hi)], dtype)
        return out

    def read_rows(
        self,
        fqn: str,
        offsets: tuple[int, ...],
        sizes: tuple[int, ...],
        axis: int,
        dtype: str | None = None,
    ) -> list[np.ndarray] | None:
        """The region as a list of stored chunks' views that tile it along ``axis`` (each
        covering the region's whole extent on the other axes), in order, nothing copied; None
        if the chunks do not tile it that way (a row-parallel split: use ``read``)."""
        pieces = sorted(self._overlaps(fqn, offsets, sizes), key=lambda x: x[0][axis])
        end = offsets[axis]
        for lo, hi, _, _ in pieces:
            others = [(lo[d], hi[d]) for d in range(len(sizes)) if d != axis]
            if lo[axis] != end or others != [
                (offsets[d], offsets[d] + sizes[d]) for d in range(len(sizes)) if d != axis
            ]:
                return None
            end = hi[axis]
        if end != offsets[axis] + sizes[axis]:
            return None
        dtype = self._dtype(fqn, dtype)
        return [
            A.cast(self._load(info)[self._within(chunk, lo, hi)], dtype)
            for lo, hi, chunk, info in pieces
        ]

    @staticmethod
    def _key_region(
        key: str, shape: tuple[int, ...], row: int
    ) -> tuple[str, tuple[int, ...], tuple[int, ...], bool]:
        """(sharded key, offsets, sizes, stacked) of ``shape`` rows from ``row`` of a state-dict
        key; ``stacked``: the region has the leading layer axis of size 1."""
        fqn, layer = sharded_key(key)
        start = (row,) + (0,) * (len(shape) - 1)
        if layer is None:
            return fqn, start, shape, False
        return fqn, (layer, *start), (1, *shape), True

    def read_key_rows(
        self, key: str, shape: tuple[int, ...], dtype: str | None = None, row: int = 0
    ) -> list[np.ndarray] | None:
        """``read_key`` as row blocks (see ``read_rows``), or None."""
        fqn, offsets, sizes, stacked = self._key_region(key, shape, row)
        parts = self.read_rows(fqn, offsets, sizes, int(stacked), dtype)
        if parts is None or not stacked:
            return parts
        return [p[0] for p in parts]

    def read_key(
        self, key: str, shape: tuple[int, ...], dtype: str | None = None, row: int = 0
    ) -> np.ndarray:
        """``shape`` of the global tensor of a megatron state-dict key (one layer of a stacked
        tensor) from row ``row`` (so padded rows are never read, and fc1's gate and up halves
        can be read apart)."""
        fqn, offsets, sizes, stacked = self._key_region(key, shape, row)
        t = self.read(fqn, offsets, sizes, dtype)
        return t[0] if stacked else t

    def inferred_layout(self) -> tuple[int, int]:
        """(tp, pp) the checkpoint was written with, from the chunks of ``PROBE``: the number
        of chunks per layer, and the number of runs of consecutive layers stored in the same
        files."""
        chunks = self.chunks.get(PROBE)
        if not chunks:
            raise UserError(f"no {PROBE}: not a GPT checkpoint", path=self.dir)
        by_layer: dict[int, set[str]] = {}
        for index, info in chunks:
            by_layer.setdefault(int(index.offset[0]), set()).add(info.relative_path)
        tp = sum(1 for index, _ in chunks if int(index.offset[0]) == 0)
        runs, prev = 0, None
        for layer in sorted(by_layer):
            files = frozenset(by_layer[layer])
            if files != prev:
                runs += 1
                prev = files
        return tp, runs

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def iter_keys(lay: Layout) -> Iterator[str]:
    seen: set[str] = set()
    for c in lay.chunks:
        if c.key not in seen:
            seen.add(c.key)
            yield c.key
