"""``torch.save``'s file format, written without torch.

A torch_dist checkpoint stores each chunk as a ``torch.save`` record: an uncompressed zip whose
``data.pkl`` pickles ``torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False,
OrderedDict())`` and whose ``data/0`` holds the storage's bytes. This module writes the same
bytes ``torch.save`` writes with CRC32 switched off (``torch.serialization.set_crc32_options``;
``torch.load`` does not check it, and the provenance sha256 covers the files), entry for entry,
so that a conversion needs no ``import torch`` (see ``arrays``). tests/convert/test_arrays.py
compares its output with ``torch.save``'s byte for byte.

Two differences, both allowed by the format: the ``serialization_id`` (random in torch) is
derived from the record's name, so the same input gives the same bytes; records of 4 GiB or
more, which torch writes with zip64 entries, are refused (``TooLarge``; the caller uses
``torch.save`` for those).

``Ref`` and ``RefPickler`` pickle torch's classes and functions by name, without importing
them; ``dcp_meta`` uses them for the ``.metadata`` file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import struct
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
        central.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                0,
                0,
                0x0808,
                0,
                0,
                0,
                0,
                size,
                size,
                len(path),
                0,
                0,
                0,
                0,
                0,
                cursor,
            )
            + path
        )
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
