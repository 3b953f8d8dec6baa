"""megatron-core's torch_dist checkpoint, read: any region of a tensor, from the chunks holding it.

``TorchDistReader`` opens one ``iter_XXXXXXX`` directory (its ``.metadata`` through
``dcp_meta``'s allow-list, every file it names checked there and whole), reads a region of a
tensor from the stored chunks that overlap it (``torch_record.load_record``: mapped, not copied),
hands a region that stored chunks tile by rows as those chunks' views, and infers the
tensor/pipeline-parallel layout the checkpoint was written with. The layout and writer are
``torch_dist``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmbuild.convert import arrays as A
from llmbuild.convert.formats import dcp_meta
from llmbuild.convert.formats.torch_dist import PROBE, sharded_key
from llmbuild.convert.formats.torch_record import load_record
from llmbuild.errors import UserError


class TorchDistReader:
    """Regions of the tensors of one ``iter_XXXXXXX`` directory, read from the chunks."""

    def __init__(self, iter_dir: str | Path) -> None:
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
        return {
            k: (tuple(v.size), v.properties.dtype)
            for k, v in self.md.state_dict_metadata.items()
            if isinstance(v, dcp_meta.TensorStorageMetadata)
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
