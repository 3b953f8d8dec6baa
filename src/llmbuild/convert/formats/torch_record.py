"""``torch.save``'s file format, both sides, without torch: the records of a torch_dist checkpoint.

A torch_dist checkpoint stores each chunk as a ``torch.save`` record: an uncompressed zip whose
``data.pkl`` pickles ``torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False,
OrderedDict())`` and whose ``data/0`` holds the storage's bytes.

Writing (``write_tensor``, ``write_object``): the same bytes ``torch.save`` writes with CRC32
switched off (``torch.serialization.set_crc32_options``; ``torch.load`` does not check it, and
the provenance sha256 covers the files), entry for entry, so that a conversion needs no ``import
torch`` (see ``arrays``). tests/convert/test_arrays.py compares its output with ``torch.save``'s
byte for byte. Two differences, both allowed by the format: the ``serialization_id`` (random in
torch) is derived from the record's name, so the same input gives the same bytes; records of 4
GiB or more, which torch writes with zip64 entries, are refused (``TooLarge``; ``torch_save``
writes those).

Reading (``load_record``): a plain tensor record is mapped, not copied, by a pickle reader that
allows nothing but a tensor's few globals; anything else goes to ``torch.load(weights_only)``.

``Ref`` and ``RefPickler`` pickle torch's classes and functions by name, without importing
them; ``dcp_meta`` uses them for the ``.metadata`` file.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import pickle
import struct
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from llmbuild.convert import arrays as A

ALIGN = 64  # torch's kFieldAlignment: every entry's data starts at a multiple of 64
_LIMIT = 0xFFFFFFFF
_STORAGE = {
    "float64": "DoubleStorage",
    "float32": "FloatStorage",
    "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "int16": "ShortStorage",
    "int8": "CharStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
}


class TooLarge(Exception):
    """A record of 4 GiB or more (torch writes zip64 entries for it; this module does not)."""


class Ref:
    """A global (a class, function or dtype) pickled by its module and name; one object per
    name, so a pickle names it once and refers back to it after."""

    _cache: dict[tuple[str, str], Ref] = {}

    def __new__(cls, module: str, name: str) -> Ref:
        key = (module, name)
        if key not in cls._cache:
            obj = super().__new__(cls)
            obj.module, obj.name = module, name
            cls._cache[key] = obj
        return cls._cache[key]

    module: str
    name: str

    def __reduce__(self) -> str:
        return self.name  # pickle then calls save_global(self, name)

    def __call__(self, *args: Any) -> Any:  # pickle wants a reduce function to be callable
        raise TypeError(f"{self!r} is a name to pickle, not callable here")

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"

    def __eq__(self, other: object) -> bool:
        # equal to the real object it names: str(torch.bfloat16) is "torch.bfloat16"
        return self is other or (not isinstance(other, Ref) and str(other) == repr(self))

    def __hash__(self) -> int:
        return hash((self.module, self.name))


class Reduce:
    """An object pickled as ``func(*args)``."""

    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.func, self.args)


class RefPickler(pickle._Pickler):  # type: ignore[name-defined]
    """The pure-Python pickler, writing ``Ref``s (and the classes in ``names``) as globals of
    their torch names; ``persistent`` maps objects to persistent ids (torch's storages)."""

    def __init__(
        self,
        f: Any,
        protocol: int,
        names: dict[type, tuple[str, str]] | None = None,
        persistent: dict[int, Any] | None = None,
    ) -> None:
        super().__init__(f, protocol=protocol)
        self.names = names or {}
        self.persistent = persistent or {}

    def persistent_id(self, obj: Any) -> Any:
        return self.persistent.get(id(obj))

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if isinstance(obj, Ref):
            module, name = obj.module, obj.name
        elif isinstance(obj, type) and obj in self.names:
            module, name = self.names[obj]
        else:
            super().save_global(obj, name)
            return
        if self.proto >= 4:
            self.save(module)
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")
        self.memoize(obj)


class _Storage:
    pass


@functools.lru_cache(maxsize=1024)
def tensor_pickle(dtype: str, shape: tuple[int, ...]) -> bytes:
    """``data.pkl`` of a contiguous tensor whose storage is exactly its bytes (key "0");
    cached: a checkpoint's chunks repeat a few shapes layer after layer."""
    stride, step = [], 1
    for d in reversed(shape):
        stride.append(step)
        step *= d
    numel = step
    storage = _Storage()
    pid = ("storage", Ref("torch", _STORAGE[dtype]), "0", "cpu", numel)
    obj = Reduce(
        Ref("torch._utils", "_rebuild_tensor_v2"),
        (
            storage,
            0,
            tuple(shape),
            tuple(reversed(stride)),
            False,
            Reduce(Ref("collections", "OrderedDict"), ()),
        ),
    )
    buf = io.BytesIO()
    RefPickler(buf, 2, persistent={id(storage): pid}).dump(obj)
    return buf.getvalue()


def _ident(name: str) -> bytes:
    """A 40-digit serialization id derived from the record's name (torch draws it at random)."""
    n = int.from_bytes(hashlib.sha256(name.encode()).digest()[:17], "little")
    return f"{n % 10**40:040d}".encode()


def _write(f: Any, entries: list[tuple[str, Any]]) -> int:
    """Write the zip of ``entries`` ((name, bytes-like), in order) at ``f``'s position, laid
    out as torch's PyTorchStreamWriter lays it out; returns the bytes written."""
    cursor, central = 0, []
    for name, data in entries:
        path = f"archive/{name}".encode()
        size = memoryview(data).nbytes
        if cursor >= _LIMIT or size >= _LIMIT:
            raise TooLarge(name)
        pad = -(cursor + 30 + len(path) + 4) % ALIGN
        head = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 0, 0x0808, 0, 0, 0, 0, 0, 0, len(path), pad + 4
        )
        f.write(head + path + b"FB" + struct.pack("<H", pad) + b"Z" * pad)
        f.write(data)
        f.write(struct.pack("<IIII", 0x08074B50, 0, size, size))
        # central directory entry: signature, versions, flags, method, time, date, crc, sizes,
        # name length, extra, comment, disk, attributes, the local header's offset
        # fmt: off
        central.append(struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 0, 0, 0x0808, 0, 0, 0, 0, size, size,
            len(path), 0, 0, 0, 0, 0, cursor,
        ) + path)
        # fmt: on
        cursor += len(head) + len(path) + 4 + pad + size + 16
    cd = b"".join(central)
    n = len(entries)
    f.write(cd)
    eocd64 = cursor + len(cd)
    f.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 0x2D, 0, 0, n, n, len(cd), cursor))
    f.write(struct.pack("<IIQI", 0x07064B50, 0, eocd64, 1))
    f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(cd), cursor, 0))
    return eocd64 + 56 + 20 + 22


_HEAD = [(".format_version", b"1"), (".storage_alignment", b"64"), ("byteorder", b"little")]


def _record(f: Any, pkl: bytes, storages: list[tuple[str, Any]], name: str) -> int:
    """The entries of one record, in torch's order, written at ``f``'s position."""
    return _write(
        f,
        [
            ("data.pkl", pkl),
            *_HEAD,
            *storages,
            ("version", b"3\n"),
            (".data/serialization_id", _ident(name)),
        ],
    )


def write_tensor(f: Any, a: np.ndarray, name: str) -> int:
    """``torch.save`` of ``a`` (an array of a logical dtype, see ``arrays``) at ``f``'s
    position; ``name`` seeds the serialization id. Returns the bytes written."""
    a = np.ascontiguousarray(a)
    data = memoryview(a.reshape(-1).view(np.uint8)) if a.size else b""
    pkl = tensor_pickle(A.dtype_name(a), tuple(a.shape))
    return _record(f, pkl, [("data/0", data)], name)


def write_object(f: Any, obj: Any, name: str) -> int:
    """``torch.save`` of plain data (no tensors): its protocol-2 pickle in the same zip."""
    return _record(f, pickle.dumps(obj, protocol=2), [], name)


def torch_save(f: Any, obj: Any) -> None:
    """``torch.save`` itself at ``f``'s position, CRC32 off as above (a tensor is given as an
    array of ``arrays`` and saved as a new C-ordered copy: its storage exactly its bytes, its
    strides the contiguous ones, also on axes of size 1)."""
    import torch

    if isinstance(obj, np.ndarray):
        obj = A.to_torch(np.array(obj, order="C", copy=True))
    crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(obj, f)
    finally:
        torch.serialization.set_crc32_options(crc)


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


_STORAGE_DTYPES = {v: k for k, v in _STORAGE.items()}  # torch's storage class -> dtype


class _StorageType:
    def __init__(self, dtype: str) -> None:
        self.dtype = dtype


class _NotPlain(Exception):
    pass


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
    from llmbuild.convert.formats.safetensors_io import map_array

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
