"""Batched encoding: many documents per call into the fast tokenizer, in three overlapped stages.

Megatron-LM's preprocess_data.py (and data/handlers.py's per-document path) calls the
tokenizer once per document in worker processes and pickles every id back. Here one process
runs three stages at once, each a bounded queue apart so memory stays a few batches however
large the input:

1. reading and parsing the input into batches of about ``BATCH_CHARS`` characters (a thread);
2. ``tokenizers.Tokenizer.encode_batch`` on each batch, which releases the GIL and spreads the
   documents over ``workers`` Rust threads (a thread);
3. ids -> one numpy block per batch -> the shard files (the calling thread).

The ids are exactly those of ``tok(text)``: the backend is the tokenizer's own, with no
truncation or padding, and ``fast_backend`` refuses a tokenizer whose backend disagrees with it
on probe texts (the caller then keeps the per-document path).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
BATCH_CHARS = 1 << 20  # characters of text per encode_batch call
BATCH_DOCS = 4096  # and at most this many documents
DEPTH = 2  # batches waiting between two stages
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


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


class Background:
    """Iterate ``source`` in a thread, at most ``depth`` items ahead of the consumer.

    An exception in the thread is raised in the consumer; closing the consumer (or leaving a
    ``with`` block) stops the thread.
    """

    def __init__(self, source: Iterable[T], depth: int = DEPTH) -> None:
        self.q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(source,), daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterable[Any]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer
            self._put(_Failed(exc))
            return
        self._put(_END)

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                item = self.q.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encoded(
    backend: Any,
    groups: Iterable[list[T]],
    add_special_tokens: bool,
    offsets: bool,
    text: Callable[[T], str] | None = None,
) -> Iterator[tuple[list[T], list[Any]]]:
    """(group, the encodings of its texts) per group; ``text`` picks an item's text (default:
    the item); ``offsets=False`` skips computing character offsets."""
    encode = backend.encode_batch if offsets else backend.encode_batch_fast
    for group in groups:
        texts = group if text is None else [text(item) for item in group]
        yield group, encode(texts, add_special_tokens=add_special_tokens)


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
