"""Pretrain and instruction handlers: text -> token ids (and loss labels) -> Megatron shards.

The shards are megatron.core indexed datasets written with its own IndexedDatasetBuilder, so
Megatron reads them as it reads its own. A shard directory holds ``meta.json`` naming its
kind and prefixes, which is the contract with ``llmbuild train``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError

IGNORE_INDEX = -100
EOD_TOKEN = "<|endoftext|>"
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


def conversation_labels(
    text: str,
    spans: Sequence[tuple[int, int]],
    offsets: Sequence[tuple[int, int]],
    ids: Sequence[int],
) -> list[int]:
    """Labels for ``ids``: the id where the token starts inside a trained span, else -100."""
    labels = []
    for tok, (start, _end) in zip(ids, offsets, strict=True):
        trained = any(s <= start < e for s, e in spans)
        labels.append(tok if trained else IGNORE_INDEX)
    return labels


def assistant_spans(
    render: Callable[..., str], messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of every assistant turn.

    A span starts where the template's generation prompt ends and runs to the end of that
    turn as the template renders it (the end-of-turn token included, so the model learns to
    stop). The template must be prefix-stable: rendering a prefix of the conversation gives a
    prefix of the whole.
    """
    full = render(messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], add_generation_prompt=True)
        through = render(messages[: i + 1], add_generation_prompt=False)
        if not (full.startswith(before) and full.startswith(through)):
            raise UserError(
                "the chat template is not prefix-stable, so prompt tokens cannot be "
                "masked; use a template that renders turns independently",
                field="chat_template",
            )
        spans.append((len(before), len(through)))
    return full, spans


class _Encoder:
    """Holds one tokenizer per worker process."""

    tokenizer: Any = None

    @classmethod
    def init(cls, tokenizer_dir: str) -> None:
        from transformers import AutoTokenizer

        cls.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)

    @classmethod
    def pretrain(cls, text: str) -> list[int]:
        tok = cls.tokenizer
        return tok(text, add_special_tokens=False)["input_ids"] + [
            tok.convert_tokens_to_ids(EOD_TOKEN)
        ]

    @classmethod
    def conversation(cls, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        tok = cls.tokenizer

        def render(msgs: list[dict[str, str]], add_generation_prompt: bool) -> str:
            if not msgs:
                return ""
            return tok.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=add_generation_prompt
            )

        text, spans = assistant_spans(render, messages)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        return ids, conversation_labels(text, spans, enc["offset_mapping"], ids)


def _encode_stream(
    fn: Callable[[Any], Any], items: Iterable[Any], tokenizer_dir: str, workers: int
) -> Iterator[Any]:
    if workers <= 1:
        _Encoder.init(tokenizer_dir)
        yield from map(fn, items)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_Encoder.init, initargs=(tokenizer_dir,)) as pool:
        yield from pool.imap(fn, items, chunksize=64)


def _builder(prefix: Path):
    import numpy as np
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
) -> TokenizeStats:
    """Documents joined with EOD into ``out_dir/text_document.{bin,idx}``."""
    stats = TokenizeStats("pretrain")
    prefix = out_dir / PRETRAIN_PREFIX
    builder = _builder(prefix)
    for ids in _encode_stream(_Encoder.pretrain, docs, tokenizer_dir, workers):
        _add(builder, ids)
        stats.documents += 1
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
) -> TokenizeStats:
    """One document per conversation: input ids and labels (-100 outside assistant turns)."""
    if overlong not in ("drop", "truncate", "error"):
        raise UserError(
            f"unknown overlong policy {overlong!r}; use drop, truncate or error", field="overlong"
        )
    stats = TokenizeStats("sft")
    ids_b = _builder(out_dir / SFT_PREFIXES["input_ids"])
    lab_b = _builder(out_dir / SFT_PREFIXES["labels"])
    for n, (ids, labels) in enumerate(
        _encode_stream(_Encoder.conversation, convs, tokenizer_dir, workers)
    ):
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
        stats.tokens += len(ids)
        stats.trained_tokens += sum(x != IGNORE_INDEX for x in labels)
        stats.max_length = max(stats.max_length, len(ids))
        if progress:
            progress(stats.documents, stats.tokens)
    ids_b.finalize(str(out_dir / SFT_PREFIXES["input_ids"]) + ".idx")
    lab_b.finalize(str(out_dir / SFT_PREFIXES["labels"]) + ".idx")
    return stats


def write_meta(out_dir: Path, stats: TokenizeStats, tokenizer_dir: str, seq_length: int) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    meta = {
        "kind": stats.kind,
        "prefixes": {"text": PRETRAIN_PREFIX} if stats.kind == "pretrain" else SFT_PREFIXES,
        "eod_id": tok.convert_tokens_to_ids(EOD_TOKEN),
        "pad_id": tok.pad_token_id
        if tok.pad_token_id is not None
        else tok.convert_tokens_to_ids(EOD_TOKEN),
        "vocab_size": len(tok),
        "stats": stats.as_dict(seq_length),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
