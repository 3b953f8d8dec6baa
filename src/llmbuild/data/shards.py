"""A megatron.core indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``) written in large blocks.

The bytes are those megatron.core's ``IndexedDatasetBuilder`` writes when every document is
one sequence (``add_document(ids, [len(ids)])``, as Megatron-LM's ``tools/preprocess_data.py``
adds them without sentence splitting), with the same dtype code, so Megatron reads the shards
as it reads its own (tests/data/test_fast_tokenize.py compares the bytes). Unlike the builder,
which keeps every length in Python lists, the lengths go to a spill file as they come, so
memory stays bounded however many documents there are.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

_BLOCK = 1 << 20  # index entries per read/write when finishing the .idx


# megatron.core.datasets.indexed_dataset.DType's codes and optimal_dtype, kept here because
# importing megatron.core costs seconds of start-up (tests/data/test_fast_tokenize.py checks
# them against megatron.core).
DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4, np.dtype(np.int64): 5}
UINT16_BELOW = 65500


def optimal_dtype(vocab_size: int) -> type[np.number]:
    """The token dtype Megatron-LM's preprocess_data.py writes for this vocabulary
    (``DType.optimal_dtype(len(tokenizer))``): uint16 below 65,500 ids, else int32."""
    return np.uint16 if vocab_size is not None and vocab_size < UINT16_BELOW else np.int32


class ShardWriter:
    """Append documents (each one sequence) in batches; ``finalize`` writes the .idx."""

    def __init__(self, prefix: str | Path, dtype: type[np.number]) -> None:
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        self.code = DTYPE_CODES[self.dtype]
        self.bin = open(self.prefix + ".bin", "wb")  # noqa: SIM115 (closed in finalize)
        self.spill_path = self.prefix + ".lengths.tmp"
        self.spill = open(self.spill_path, "wb")  # noqa: SIM115
        self.documents = 0

    def add_flat(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Documents given as their concatenated ids and their lengths."""
        if flat.dtype != self.dtype:
            flat = flat.astype(self.dtype)
        self.bin.write(memoryview(np.ascontiguousarray(flat)).cast("B"))
        self.spill.write(np.asarray(lengths, dtype=np.int32).tobytes())
        self.documents += len(lengths)

    def finalize(self) -> None:
        """The .idx: header, lengths (int32), byte offsets (int64), document indices (int64)."""
        self.bin.close()
        self.spill.close()
        n = self.documents
        itemsize = self.dtype.itemsize
        tmp = self.prefix + ".idx.tmp"
        with open(tmp, "wb") as out, open(self.spill_path, "rb") as spill:
            out.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", self.code))
            out.write(struct.pack("<Q", n) + struct.pack("<Q", n + 1))
            for _ in range(0, n, _BLOCK):  # lengths, as spilled
                out.write(spill.read(4 * _BLOCK))
            spill.seek(0)
            offset = 0
            for _ in range(0, n, _BLOCK):  # byte offset of each sequence
                lengths = np.frombuffer(spill.read(4 * _BLOCK), dtype=np.int32)
                ends = np.cumsum(lengths, dtype=np.int64) * itemsize + offset
                starts = np.concatenate(([offset], ends[:-1])).astype(np.int64)
                out.write(starts.tobytes())
                offset = int(ends[-1])
            for start in range(0, n + 1, _BLOCK):  # one sequence per document
                out.write(np.arange(start, min(start + _BLOCK, n + 1), dtype=np.int64).tobytes())
        os.unlink(self.spill_path)
        os.replace(tmp, self.prefix + ".idx")

    def abort(self) -> None:
        for fh in (self.bin, self.spill):
            fh.close()
