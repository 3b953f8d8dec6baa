"""Pretrain and instruction data -> Megatron shards (the builders).

The shards are megatron.core indexed datasets written with its own IndexedDatasetBuilder, so
Megatron reads them as it reads its own. A shard directory holds ``meta.json`` naming its
kind and prefixes, which is the contract with ``llmbuild train``. The ids come from the
handlers (data/handlers.py), the special ids from the tokenizer directory
(data/specials.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np

from llmbuild.data import batched, fastbpe
from llmbuild.data.handlers import IGNORE_INDEX, Encoder, encode_stream, span_labels
from llmbuild.data.shards import ShardWriter, optimal_dtype
from llmbuild.data.specials import SpecialTokens, load_tokenizer, resolve_special_tokens
from llmbuild.errors import UserError

PRETRAIN_PREFIX = "text_document"
SFT_PREFIXES = {"input_ids": "input_ids_document", "labels": "labels_document"}
Progress = Callable[[int, int], None]  # (documents done, tokens done)


@dataclass
class TokenizeStats:
    kind: str
    documents: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    over_seq_length: int = 0
    dropped: int = 0
    truncated: int = 0
    max_length: int = 0
    lengths: list[int] = field(default_factory=list, repr=False)
    bos_documents: int = 0  # documents whose first id is the BOS id
    engine: str = ""  # what encoded the text, and why (not in meta.json: the bytes are equal)

    def as_dict(self, seq_length: int) -> dict[str, Any]:
        n = max(self.documents + self.dropped, 1)
        return {
            "kind": self.kind,
            "documents": self.documents,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "seq_length": seq_length,
            "over_seq_length": self.over_seq_length,
            "over_seq_length_fraction": round(self.over_seq_length / n, 6),
            "dropped": self.dropped,
            "truncated": self.truncated,
            "max_length": self.max_length,
        }


def _specials(tokenizer_dir: str, specials: SpecialTokens | None, tok: Any):
    tok = tok if tok is not None else load_tokenizer(tokenizer_dir)
    return (specials or resolve_special_tokens(tokenizer_dir, tok=tok)), tok


def _per_document(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    tokenizer_dir: str,
    workers: int,
    eod: int,
    tok: Any,
) -> Iterator[list[Any]]:
    """The per-document path (a tokenizer without a fast backend), in batches."""
    stream = encode_stream(fn, items, tokenizer_dir, workers, eod, tok)
    return batched.batches(stream, lambda _: 256)


def pretrain_engine(
    tok: Any, eod: int, dtype: Any, samples: Iterable[str] = ()
) -> tuple[batched.HFBlocks | batched.TiktokenBlocks | None, str]:
    """How pretraining text is encoded, and why: tiktoken's engine where it provably gives
    the tokenizer's ids (data/fastbpe.py), else the fast tokenizer's Rust backend, else
    (None) the per-document path."""
    samples = list(samples)
    backend = batched.fast_backend(tok, add_special_tokens=True, samples=samples)
    if backend is None:
        return None, "per document: the tokenizer has no fast backend that encodes alike"
    plan, why = fastbpe.plan_for(tok, backend, add_special_tokens=True, samples=samples)
    if plan is not None:
        return batched.TiktokenBlocks(plan, eod, dtype), f"tiktoken ({plan.name} split, exact)"
    return batched.HFBlocks(backend.to_str(), True, eod, dtype), f"tokenizers: {why}"


def _pretrain_blocks(
    docs: Iterable[str],
    tokenizer_dir: str,
    tok: Any,
    eod: int,
    workers: int,
    dtype: Any,
    stats: TokenizeStats,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids concatenated, lengths) per batch of documents: each document's ids with the
    tokenizer's own special tokens, then the EOD unless the post-processor appended it (as
    handlers.Encoder.pretrain)."""
    docs = iter(docs)
    head = list(islice(docs, 4))
    blocks, stats.engine = pretrain_engine(tok, eod, dtype, head)
    docs = chain(head, docs)
    if blocks is None:
        for lists in _per_document(Encoder.pretrain, docs, tokenizer_dir, workers, eod, tok):
            lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
            yield np.fromiter(chain.from_iterable(lists), dtype, int(lengths.sum())), lengths
        return
    yield from batched.id_blocks(blocks, batched.batches(docs, len), workers)


def tokenize_pretrain(
    docs: Iterable[str],
    tokenizer_dir: str,
    out_dir: Path,
    seq_length: int,
    workers: int = 1,
    progress: Progress | None = None,
    specials: SpecialTokens | None = None,
    tok: Any = None,
) -> TokenizeStats:
    """Documents, each ending with the EOD, into ``out_dir/text_document.{bin,idx}``, in the
    dtype Megatron-LM's preprocess_data.py picks for the vocabulary (uint16 below 65,500)."""
    specials, tok = _specials(tokenizer_dir, specials, tok)
    stats = TokenizeStats("pretrain")
    writer = ShardWriter(out_dir / PRETRAIN_PREFIX, optimal_dtype(specials.vocab_size))
    eod, bos = specials.eod_id, specials.bos_id
    try:
        blocks = _pretrain_blocks(docs, tokenizer_dir, tok, eod, workers, writer.dtype, stats)
        for flat, lengths in blocks:
            writer.add_flat(flat, lengths)
            if bos is not None:
                starts = np.cumsum(lengths) - lengths
                stats.bos_documents += int((flat[starts] == bos).sum())
            stats.documents += len(lengths)
            stats.tokens += int(lengths.sum())
            stats.max_length = max(stats.max_length, int(lengths.max()))
            stats.over_seq_length += int((lengths > seq_length + 1).sum())
            if progress:
                progress(stats.documents, stats.tokens)
    except BaseException:
        writer.abort()
        raise
    stats.trained_tokens = stats.tokens
    writer.finalize()
    return stats


class SFTBlocks:
    """Rendered conversations (text, assistant spans) -> (ids, labels) of each, in a worker
    process: the text encoded by tiktoken under a proven plan (each token's start from the
    byte lengths of those before it) or by the tokenizer's backend with offsets, the labels
    where a token starts inside an assistant span (as handlers.span_labels). The caller
    renders the chat template (Python, needs transformers); a worker needs neither."""

    def __init__(self, plan: Any, backend_json: str, bos: int | None) -> None:
        self.plan, self.backend_json, self.bos = plan, backend_json, bos

    def build(self) -> Callable[[list[Any]], list[tuple[np.ndarray, np.ndarray]]]:
        from tokenizers import Tokenizer

        bos = self.bos
        backend = Tokenizer.from_str(self.backend_json)
        fast = fastbpe.Encoder(self.plan) if self.plan is not None else None

        def labelled(text: str, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
            ranks = fast.ranks(text) if fast is not None else None
            if ranks is None:
                enc = backend.encode(text, add_special_tokens=False)
                ids = np.asarray(enc.ids, dtype=np.int64)
                return ids, span_labels(ids, enc.offsets, spans)
            assert fast is not None
            ids = fast.plan.ids[ranks]
            starts = fastbpe.starts_in_bytes(fast, ranks)
            trained = np.zeros(len(ids), dtype=bool)
            for s, e in fastbpe.byte_spans(text, spans):
                trained |= (starts >= s) & (starts < e)
            return ids, np.where(trained, ids, IGNORE_INDEX)

        def block(rendered: list[tuple[str, list[tuple[int, int]]]]) -> list[Any]:
            out = []
            for text, spans in rendered:
                ids, labels = labelled(text, spans)
                while bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
                    ids, labels = ids[1:], labels[1:]  # a template that writes BOS twice
                out.append((ids, labels))
            return out

        return block


def _sft_batches(
    convs: Iterable[list[dict[str, str]]],
    tokenizer_dir: str,
    tok: Any,
    eod: int,
    workers: int,
    stats: TokenizeStats | None = None,
) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """Conversations -> (ids, labels) as handlers.Encoder.conversation makes them, in
    ``workers`` processes (SFTBlocks) when the tokenizer has a fast backend."""
    Encoder.init(tokenizer_dir, eod, tok)
    backend = batched.fast_backend(tok, add_special_tokens=False)
    if backend is None:
        if stats is not None:
            stats.engine = "per document: the tokenizer has no fast backend that encodes alike"
        for block in _per_document(Encoder.conversation, convs, tokenizer_dir, workers, eod, tok):
            yield [(np.asarray(ids), np.asarray(labels)) for ids, labels in block]
        return
    plan, why = fastbpe.plan_for(tok, backend, add_special_tokens=False, offsets=True)
    if stats is not None:
        stats.engine = f"tiktoken ({plan.name} split, exact)" if plan else f"tokenizers: {why}"
    blocks = SFTBlocks(plan, backend.to_str(), tok.bos_token_id)
    rendered = map(Encoder.render_spans, convs)
    yield from batched.id_blocks(blocks, batched.batches(rendered, lambda r: len(r[0])), workers)


def tokenize_instructions(
    convs: Iterable[list[dict[str, str]]],
    tokenizer_dir: str,
    out_dir: Path,
    seq_length: int,
    overlong: str = "drop",
    workers: int = 1,
    progress: Progress | None = None,
    specials: SpecialTokens | None = None,
    tok: Any = None,
) -> TokenizeStats:
    """One document per conversation: input ids and labels (-100 outside assistant turns),
    both int32 (the labels are signed)."""
    if overlong not in ("drop", "truncate", "error"):
        raise UserError(
            f"unknown overlong policy {overlong!r}; use drop, truncate or error", field="overlong"
        )
    specials, tok = _specials(tokenizer_dir, specials, tok)
    bos = tok.bos_token_id
    stats = TokenizeStats("sft")
    ids_w = ShardWriter(out_dir / SFT_PREFIXES["input_ids"], np.int32)
    lab_w = ShardWriter(out_dir / SFT_PREFIXES["labels"], np.int32)
    n = -1
    try:
        for block in _sft_batches(convs, tokenizer_dir, tok, specials.eod_id, workers, stats):
            keep_ids, keep_labels = [], []
            for ids, labels in block:
                n += 1
                if len(ids) > seq_length:
                    stats.over_seq_length += 1
                    if overlong == "error":
                        raise UserError(
                            f"conversation {n} has {len(ids)} tokens > seq_length "
                            f"{seq_length}; raise seq_length or use overlong: drop",
                            field="seq_length",
                        )
                    if overlong == "drop":
                        stats.dropped += 1
                        continue
                    ids, labels = ids[:seq_length], labels[:seq_length]
                    stats.truncated += 1
                trained = int((labels != IGNORE_INDEX).sum())
                if trained == 0:
                    stats.dropped += 1
                    continue
                keep_ids.append(ids)
                keep_labels.append(labels)
                stats.documents += 1
                stats.bos_documents += bos is not None and int(ids[0]) == bos
                stats.tokens += len(ids)
                stats.trained_tokens += trained
                stats.max_length = max(stats.max_length, len(ids))
            if keep_ids:
                lengths = np.fromiter(map(len, keep_ids), dtype=np.int64, count=len(keep_ids))
                ids_w.add_flat(np.concatenate(keep_ids), lengths)
                lab_w.add_flat(np.concatenate(keep_labels), lengths)
            if progress:
                progress(stats.documents, stats.tokens)
    except BaseException:
        ids_w.abort()
        lab_w.abort()
        raise
    ids_w.finalize()
    lab_w.finalize()
    return stats


def _bos_meta(
    stats: TokenizeStats, specials: SpecialTokens, tok: Any
) -> tuple[int | None, str | None, str]:
    """(id, token, where it came from) of the BOS the written documents start with."""
    if stats.kind == "pretrain":
        if specials.bos_id is None:
            return None, None, "none: the tokenizer adds no BOS"
        source = "the tokenizer's post-processor (add_special_tokens=True)"
        return specials.bos_id, specials.bos_token, source
    bos = tok.bos_token_id if tok is not None else specials.bos_id
    if bos is None or stats.bos_documents == 0:
        return None, None, "none: the chat template writes no BOS"
    token = tok.bos_token if tok is not None else specials.bos_token
    if stats.bos_documents < stats.documents:
        source = f"the chat template, in {stats.bos_documents} of {stats.documents} documents"
        return None, None, source
    return bos, token, "the chat template"


def write_meta(
    out_dir: Path,
    stats: TokenizeStats,
    tokenizer_dir: str,
    seq_length: int,
    specials: SpecialTokens | None = None,
    tok: Any = None,
) -> None:
    from llmbuild.data.preference import DPO_PREFIXES

    if specials is None or (stats.kind != "pretrain" and tok is None):
        tok = tok if tok is not None else load_tokenizer(tokenizer_dir)
        specials = specials or resolve_special_tokens(tokenizer_dir, tok=tok)
    prefixes = {"pretrain": {"text": PRETRAIN_PREFIX}, "sft": SFT_PREFIXES, "dpo": DPO_PREFIXES}
    meta = {
        "kind": stats.kind,
        "prefixes": prefixes[stats.kind],
        **specials.meta(_bos_meta(stats, specials, tok)),
        "vocab_size": specials.vocab_size,
        "stats": stats.as_dict(seq_length),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
