"""Batched encoding: many documents per call, in worker processes, ids back as numpy blocks.

Megatron-LM's preprocess_data.py (and data/handlers.py's per-document path) calls the
tokenizer once per document and pickles every id back as a Python list. Here batches of about
``BATCH_CHARS`` characters go to ``workers`` single-threaded processes (``id_blocks``), each
holding only what encodes (``TiktokenBlocks``: tiktoken's engine under a plan that provably
gives the tokenizer's ids, data/fastbpe.py; else ``HFBlocks``: the fast tokenizer's Rust
``encode_batch``; for rendered conversations tokenize.SFTBlocks, which also labels), and send
back one block per batch. The caller reads the input and writes the
blocks, with at most two batches per worker in flight, so memory stays a few batches however
large the input.

The ids are exactly those of ``tok(text)``: the backend is the tokenizer's own, with no
truncation or padding, and ``fast_backend`` refuses a tokenizer whose backend disagrees with it
on probe texts (the caller then keeps the per-document path).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
BATCH_CHARS = 1 << 20  # characters of text per encode_batch call
BATCH_DOCS = 4096  # and at most this many documents
PROBES = ("Hello world", " leading space", "a\n\nb\tc  ", "Zahl 12345, ünïcödé ✓ 日本語", "")


def set_threads(workers: int) -> None:
    """The Rust thread pool's size (read when tokenizers first runs in parallel): the worker
    count, unless the caller set RAYON_NUM_THREADS; one worker turns parallelism off."""
    os.environ.setdefault("RAYON_NUM_THREADS", str(max(workers, 1)))
    if workers <= 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    else:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def fast_backend(tok: Any, add_special_tokens: bool, samples: Iterable[str] = ()) -> Any:
    """The tokenizers.Tokenizer behind ``tok`` when it encodes ``PROBES`` and ``samples``
    exactly as ``tok(text, add_special_tokens=...)``; None otherwise (a slow tokenizer)."""
    backend = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
    if backend is None:
        return None
    if backend.truncation is not None or backend.padding is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    for text in (*PROBES, *samples):
        ours = backend.encode(text, add_special_tokens=add_special_tokens).ids
        if ours != list(tok(text, add_special_tokens=add_special_tokens)["input_ids"]):
            return None
    return backend


def batches(items: Iterable[T], size: Callable[[T], int]) -> Iterator[list[T]]:
    """``items`` grouped into lists of about BATCH_CHARS (by ``size``), BATCH_DOCS at most."""
    batch: list[T] = []
    chars = 0
    for item in items:
        batch.append(item)
        chars += size(item)
        if chars >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def ids_block(
    backend: Any, texts: list[str], add_special_tokens: bool, eod: int, dtype: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(the documents' ids concatenated, their lengths): each document's ids with the
    tokenizer's special tokens, then the EOD unless the post-processor ended it with it."""
    lists = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
    for ids in lists:
        if not ids or ids[-1] != eod:
            ids.append(eod)
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    return np.fromiter(chain.from_iterable(lists), dtype, int(lengths.sum())), lengths


class HFBlocks:
    """Builds ``ids_block`` over the backend tokenizer (picklable: the tokenizer as JSON)."""

    engine = "tokenizers"

    def __init__(self, backend_json: str, add_special_tokens: bool, eod: int, dtype: Any):
        self.backend_json, self.special = backend_json, add_special_tokens
        self.eod, self.dtype = eod, np.dtype(dtype).str

    def build(self) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(self.backend_json)
        dtype = np.dtype(self.dtype)
        return lambda texts: ids_block(backend, texts, self.special, self.eod, dtype)


class TiktokenBlocks:
    """Builds the same blocks with tiktoken's engine under a proven plan (data/fastbpe.py)."""

    engine = "tiktoken"

    def __init__(self, plan: Any, eod: int, dtype: Any):
        self.plan, self.eod, self.dtype = plan, eod, np.dtype(dtype).str

    def build(self) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
        from llmbuild.data.fastbpe import Encoder

        encoder = Encoder(self.plan)
        eod, dtype = self.eod, np.dtype(self.dtype)
        eod_block = np.asarray([eod], dtype=np.int64)

        def block(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
            parts: list[np.ndarray] = []
            lengths = np.empty(len(texts), dtype=np.int64)
            for k, text in enumerate(texts):
                ids = encoder.encode(text)
                n = ids.size
                parts.append(ids)
                if n == 0 or ids[-1] != eod:
                    parts.append(eod_block)
                    n += 1
                lengths[k] = n
            return np.concatenate(parts).astype(dtype, copy=False), lengths

        return block


_WORKER: dict[str, Any] = {}


def _init_worker(blocks: Any) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _WORKER["block"] = blocks.build()


def _worker_block(batch: list[Any]) -> Any:
    return _WORKER["block"](batch)


def id_blocks(blocks: Any, batches: Iterable[list[Any]], workers: int) -> Iterator[Any]:
    """``blocks.build()``'s function of each batch, in order (HFBlocks, TiktokenBlocks:
    ids concatenated and lengths; tokenize.SFTBlocks: ids and labels per conversation). With
    several workers the batches go to that many single-threaded processes (spawned; each
    builds its own function), at most two each in flight; the GIL is never shared."""
    if workers <= 1:
        block = blocks.build()
        for batch in batches:
            yield block(batch)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(blocks,)) as pool:
        pending: deque[Any] = deque()
        for batch in batches:
            pending.append(pool.apply_async(_worker_block, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class Rate:
    """The progress line: documents, tokens, tokens/s, share of the input read, ETA."""

    def __init__(self, log: Callable[[str], None], every: float = 5.0) -> None:
        self.log, self.every = log, every
        self.start = self.last = time.monotonic()

    def line(self, docs: int, tokens: int, fraction: float | None) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        msg = f"{docs} docs, {tokens} tokens ({tokens / elapsed:,.0f} tokens/s, {elapsed:.0f}s)"
        if fraction:
            eta = elapsed * (1 - fraction) / fraction
            msg += f", {100 * fraction:.1f}% of the input, ETA {eta:.0f}s"
        return msg

    def update(self, docs: int, tokens: int, fraction: float | None = None) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.log(self.line(docs, tokens, fraction))
