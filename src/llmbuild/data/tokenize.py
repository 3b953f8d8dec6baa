"""Pretrain and instruction data -> Megatron shards (the builders).

The shards are megatron.core indexed datasets written with its own IndexedDatasetBuilder, so
Megatron reads them as it reads its own. A shard directory holds ``meta.json`` naming its
kind and prefixes, which is the contract with ``llmbuild train``. The ids come from the
handlers (data/handlers.py), the special ids from the tokenizer directory
(data/specials.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbuild.data.handlers import IGNORE_INDEX, Encoder, encode_stream
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


def _builder(prefix: Path):
    import warnings

    import numpy as np

    with warnings.catch_warnings():  # writing shards needs neither (stderr stays for errors)
        warnings.filterwarnings("ignore", "Transformer Engine and Apex are not installed")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    return IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)


def _add(builder: Any, ids: Sequence[int]) -> None:
    import torch

    builder.add_document(torch.tensor(ids, dtype=torch.int32), [len(ids)])


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
    """Documents, each ending with the EOD, into ``out_dir/text_document.{bin,idx}``."""
    if specials is None:
        tok = tok if tok is not None else load_tokenizer(tokenizer_dir)
        specials = resolve_special_tokens(tokenizer_dir, tok=tok)
    stats = TokenizeStats("pretrain")
    prefix = out_dir / PRETRAIN_PREFIX
    builder = _builder(prefix)
    stream = encode_stream(Encoder.pretrain, docs, tokenizer_dir, workers, specials.eod_id, tok)
    for ids in stream:
        _add(builder, ids)
        stats.documents += 1
        stats.bos_documents += specials.bos_id is not None and ids[0] == specials.bos_id
        stats.tokens += len(ids)
        stats.trained_tokens += len(ids)
        stats.max_length = max(stats.max_length, len(ids))
        stats.over_seq_length += len(ids) > seq_length + 1
        if progress:
            progress(stats.documents, stats.tokens)
    builder.finalize(str(prefix) + ".idx")
    return stats


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
    """One document per conversation: input ids and labels (-100 outside assistant turns)."""
    if overlong not in ("drop", "truncate", "error"):
        raise UserError(
            f"unknown overlong policy {overlong!r}; use drop, truncate or error", field="overlong"
        )
    if specials is None:
        tok = tok if tok is not None else load_tokenizer(tokenizer_dir)
        specials = resolve_special_tokens(tokenizer_dir, tok=tok)
    bos = tok.bos_token_id if tok is not None else specials.bos_id
    stats = TokenizeStats("sft")
    ids_b = _builder(out_dir / SFT_PREFIXES["input_ids"])
    lab_b = _builder(out_dir / SFT_PREFIXES["labels"])
    stream = encode_stream(
        Encoder.conversation, convs, tokenizer_dir, workers, specials.eod_id, tok
    )
    for n, (ids, labels) in enumerate(stream):
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
        if all(x == IGNORE_INDEX for x in labels):
            stats.dropped += 1
            continue
        _add(ids_b, ids)
        _add(lab_b, labels)
        stats.documents += 1
        stats.bos_documents += bos is not None and ids[0] == bos
        stats.tokens += len(ids)
        stats.trained_tokens += sum(x != IGNORE_INDEX for x in labels)
        stats.max_length = max(stats.max_length, len(ids))
        if progress:
            progress(stats.documents, stats.tokens)
    ids_b.finalize(str(out_dir / SFT_PREFIXES["input_ids"]) + ".idx")
    lab_b.finalize(str(out_dir / SFT_PREFIXES["labels"]) + ".idx")
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
    if specials is None or (stats.kind == "sft" and tok is None):
        tok = tok if tok is not None else load_tokenizer(tokenizer_dir)
        specials = specials or resolve_special_tokens(tokenizer_dir, tok=tok)
    meta = {
        "kind": stats.kind,
        "prefixes": {"text": PRETRAIN_PREFIX} if stats.kind == "pretrain" else SFT_PREFIXES,
        **specials.meta(_bos_meta(stats, specials, tok)),
        "vocab_size": specials.vocab_size,
        "stats": stats.as_dict(seq_length),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
