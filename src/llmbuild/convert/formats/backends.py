"""Who writes a torch_dist checkpoint's records and ``.metadata``: ``numpy`` (default) or ``torch``.

- ``numpy``: ``torch_record`` writes each record and ``dcp_meta``'s stand-ins are pickled as
  the ``.metadata``: no ``import torch`` (a conversion's imports take a tenth of a second
  instead of seconds), the bytes torch 2.13 writes (a record of 4 GiB or more goes through
  ``torch.save``).
- ``torch``: ``torch.save`` writes each record and the ``.metadata`` pickles
  torch.distributed.checkpoint's own classes, as DCP's ``FileSystemWriter`` does. It is the
  reference the numpy backend is tested against, and the way to keep converting when a new
  torch or megatron-core changes a format before the emulation follows (the upgrade checklist
  in the README).

Both write CRC32-free records that differ only in their serialization ids (random in torch,
derived from the record's name here); the metadata unpickles to equal objects.
``llmbuild convert hf2mg --backend numpy|torch`` chooses; tests/convert runs both.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from llmbuild.convert.formats import BACKENDS
from llmbuild.convert.formats import dcp_meta as DM
from llmbuild.convert.formats import torch_record as TR
from llmbuild.errors import UserError


@dataclass(frozen=True)
class Backend:
    name: str
    # a record of an array (``arrays``) at the file's position; the name seeds its id
    tensor: Callable[[Any, np.ndarray, str], None]
    # a record of plain data (no tensors)
    obj: Callable[[Any, Any, str], None]
    # the DCP metadata classes by the names of ``dcp_meta``'s stand-ins (``StorageInfo``, ``Size``
    # for torch.Size, ...) and ``dtype(name)``
    meta: Callable[[], SimpleNamespace]
    # the ``.metadata`` file's bytes
    dumps: Callable[[Any], bytes]


def _numpy_tensor(f: Any, a: np.ndarray, name: str) -> None:
    try:
        TR.write_tensor(f, a, name)
    except TR.TooLarge:
        TR.torch_save(f, a)


def _stand_ins() -> SimpleNamespace:
    return SimpleNamespace(**{cls.__name__: cls for cls in DM.REAL}, dtype=DM.dtype_ref)


def _dcp_classes() -> SimpleNamespace:
    """The classes ``dcp_meta``'s stand-ins pickle as (its ``REAL`` table), imported."""
    import importlib

    import torch

    real = {
        cls.__name__: getattr(importlib.import_module(module), name)
        for cls, (module, name) in DM.REAL.items()
    }
    return SimpleNamespace(**real, dtype=lambda name: getattr(torch, name))


_BACKENDS = {
    "numpy": Backend("numpy", _numpy_tensor, TR.write_object, _stand_ins, DM.dumps),
    "torch": Backend(
        "torch",
        lambda f, a, _name: TR.torch_save(f, a),
        lambda f, obj, _name: TR.torch_save(f, obj),
        _dcp_classes,
        pickle.dumps,  # what FileSystemWriter.finish does with the real Metadata
    ),
}


def get(name: str) -> Backend:
    if name not in _BACKENDS:
        raise UserError(f"unknown {name!r}; use one of {', '.join(BACKENDS)}", field="--backend")
    return _BACKENDS[name]
