"""The ``.metadata`` file of a torch.distributed.checkpoint (DCP) directory, without DCP.

``.metadata`` is a pickle of ``torch.distributed.checkpoint.metadata.Metadata``. Importing
torch.distributed.checkpoint costs about a second (it pulls in DTensor and its op tables), more
than the rest of a small conversion, and unpickling a file runs whatever the file names. So this
module has plain stand-ins for the few DCP classes the file holds, and:

- ``load`` unpickles with an allow-list: only those classes, ``torch.Size``, torch dtypes and
  the layout helper (the last three as stand-ins too: reading needs no torch). Anything else
  in the file is refused with one line (a checkpoint is data; it never gets to run code here).
- ``dumps`` pickles stand-ins under DCP's own module and class names (and torch's ``Size``,
  dtypes and ``strided`` by name, so writing needs no torch), so DCP and megatron-core read the
  file back as their own classes (checked in tests/convert/test_dcp_meta.py against
  the real classes, and by megatron-core loading every converted checkpoint in test_parity.py).

The pickled state of each class follows torch 2.13 (``TensorProperties`` pickles a tuple with a
memory-format enum; ``_StorageInfo`` leaves out ``None`` fields); the test pins it.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from llmbuild.convert.formats.torch_record import Ref, RefPickler
from llmbuild.errors import UserError

META = "torch.distributed.checkpoint.metadata"
FS = "torch.distributed.checkpoint.filesystem"


class Size(tuple):  # type: ignore[type-arg]
    """``torch.Size`` without torch: a tuple pickled as ``torch.Size((...))``."""

    def __reduce__(self) -> tuple[Any, tuple[tuple[int, ...]]]:
        return (Size, (tuple(self),))


def dtype_ref(name: str) -> Ref:
    """A torch dtype by name ('bfloat16'), pickled as ``torch.bfloat16``."""
    return Ref("torch", name)


class _Strided:
    """``torch.strided``, pickled as torch pickles it (``_get_layout('torch.strided')``);
    equal to the real one."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Ref("torch.serialization", "_get_layout"), ("torch.strided",))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Strided) or str(other) == "torch.strided"

    def __hash__(self) -> int:
        return hash("torch.strided")

    def __repr__(self) -> str:
        return "torch.strided"


STRIDED = _Strided()

# torch's dtype names a checkpoint's metadata may hold (read as ``Ref``s: no torch needed)
TORCH_DTYPES = frozenset(
    "float64 float32 float16 bfloat16 int64 int32 int16 int8 uint8 uint16 uint32 uint64 bool "
    "complex64 complex128 float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz".split()
)


def _get_layout(name: str) -> Any:
    """What torch's ``_get_layout`` gives, as a stand-in: only dense (strided) tensors are
    read here; another layout stays a name."""
    return STRIDED if name == "torch.strided" else Ref("torch", name.removeprefix("torch."))


@dataclass
class ChunkStorageMetadata:
    offsets: Any  # torch.Size
    sizes: Any


class MemFormat:
    """DCP's ``_MEM_FORMAT_ENCODING`` member (0: contiguous, 1: channels last, 2: preserve)."""

    def __init__(self, value: int) -> None:
        self.value = int(value)

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (MemFormat, (self.value,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MemFormat) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


@dataclass
class TensorProperties:
    dtype: Any
    layout: Any = None
    requires_grad: bool = False
    memory_format: MemFormat = field(default_factory=lambda: MemFormat(0))
    pin_memory: bool = False

    def __post_init__(self) -> None:
        if self.layout is None:
            self.layout = STRIDED

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.dtype, self.layout, self.requires_grad, self.memory_format, self.pin_memory)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.dtype, self.layout, self.requires_grad, fmt, self.pin_memory = state
        self.memory_format = fmt if isinstance(fmt, MemFormat) else MemFormat(fmt)


@dataclass
class TensorStorageMetadata:
    properties: TensorProperties
    size: Any  # torch.Size
    chunks: list[ChunkStorageMetadata]


@dataclass
class BytesStorageMetadata:
    pass


@dataclass
class StorageMeta:
    checkpoint_id: Any = None
    save_id: Any = None
    load_id: Any = None
    modules: list[str] = field(default_factory=list)


@dataclass
class Metadata:
    state_dict_metadata: dict[str, Any]
    planner_data: Any = None
    storage_data: Any = None
    storage_meta: Any = None
    version: Any = None


@dataclass(frozen=True)
class MetadataIndex:
    fqn: str
    offset: Any = None  # torch.Size or None
    index: int | None = field(default=None, hash=False, compare=False)


@dataclass
class StorageInfo:
    relative_path: str
    offset: int
    length: int
    transform_descriptors: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.transform_descriptors = None
        self.__dict__.update(state)


# stand-in -> (module, name) it is pickled as, and back (``backends``' torch backend uses the
# real ones by this table)
REAL: dict[type, tuple[str, str]] = {
    Size: ("torch", "Size"),
    ChunkStorageMetadata: (META, "ChunkStorageMetadata"),
    MemFormat: (META, "_MEM_FORMAT_ENCODING"),
    TensorProperties: (META, "TensorProperties"),
    TensorStorageMetadata: (META, "TensorStorageMetadata"),
    BytesStorageMetadata: (META, "BytesStorageMetadata"),
    StorageMeta: (META, "StorageMeta"),
    Metadata: (META, "Metadata"),
    MetadataIndex: (META, "MetadataIndex"),
    StorageInfo: (FS, "_StorageInfo"),
}
_STAND_IN = {v: k for k, v in REAL.items() if k is not Size}


class Opaque:
    """What megatron-core attaches to the metadata for its own use (``all_local_plans``: the
    savers' plans, made of these classes), kept as inert data: nothing here reads it."""

    def __init__(self, *args: Any) -> None:
        self.args = args


# torch.distributed.checkpoint.planner classes megatron-core's metadata may hold
_OPAQUE = {
    ("torch.distributed.checkpoint.planner", name): type(name, (Opaque,), {})
    for name in ("SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "BytesIOWriteData")
}


class _Loader(pickle.Unpickler):
    def __init__(self, f: Any, path: Path) -> None:
        super().__init__(f)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _STAND_IN:
            return _STAND_IN[(module, name)]
        if (module, name) in _OPAQUE:
            return _OPAQUE[(module, name)]
        if module == "torch" and name == "Size":
            return Size
        if module == "torch" and name in TORCH_DTYPES:
            return dtype_ref(name)
        if module == "torch.serialization" and name == "_get_layout":
            return _get_layout
        if module == "pathlib" and name in ("PosixPath", "PurePosixPath"):
            return PurePosixPath
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        raise UserError(
            f"torch_dist metadata names {module}.{name}, which a checkpoint's metadata does not "
            "hold; refusing to unpickle it (re-save the checkpoint with megatron-core)",
            path=self.path,
        )


def load(path: str | Path) -> Metadata:
    """The ``Metadata`` of a ``.metadata`` file, as stand-ins; UserError if unreadable."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            md = _Loader(f, path).load()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure: not a DCP metadata file
        raise UserError(f"unreadable torch_dist metadata ({exc})", path=path) from exc
    if not isinstance(md, Metadata):
        raise UserError(f"not torch_dist metadata (a {type(md).__name__})", path=path)
    return md


def dumps(md: Metadata) -> bytes:
    buf = io.BytesIO()
    # the pure-Python pickler, writing each stand-in under DCP's (or torch's) name
    RefPickler(buf, 4, names=REAL).dump(md)
    return buf.getvalue()
