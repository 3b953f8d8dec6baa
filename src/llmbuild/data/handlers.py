"""Pretrain and instruction handlers: a document or a conversation -> token ids and labels.

Pretraining documents are encoded as Megatron-LM's ``tools/preprocess_data.py`` encodes them
with a HF tokenizer, with the tokenizer's own special tokens (Llama's post-processor prepends
BOS, Qwen's adds nothing), then the EOD appended (once). Conversations are rendered with the
chat template, which writes BOS itself, and encoded without special tokens; only the
assistant turns are trained (labels -100 elsewhere). ``encode_stream`` runs a handler over
many items, in worker processes when asked.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from llmbuild.data.specials import load_tokenizer
from llmbuild.errors import UserError

IGNORE_INDEX = -100


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


def span_labels(
    ids: np.ndarray, offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> np.ndarray:
    """``conversation_labels`` on arrays: ``ids`` where the token starts inside a span."""
    starts = np.fromiter((start for start, _ in offsets), dtype=np.int64, count=len(ids))
    trained = np.zeros(len(ids), dtype=bool)
    for s, e in spans:
        trained |= (starts >= s) & (starts < e)
    return np.where(trained, ids, IGNORE_INDEX)


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
            fix = (
                "if it moves the system message (Mistral's v0.3 template keeps it only "
                "while a user turn is last), drop the system messages from the data, else "
                "use a template that renders turns independently"
                if messages[0]["role"] == "system"
                else "use a template that renders turns independently"
            )
            raise UserError(
                f"the chat template renders the prompt of message {i} differently once its "
                f"answer follows (not prefix-stable), so prompt tokens cannot be masked; {fix}",
                field="chat_template",
            )
        spans.append((len(before), len(through)))
    return full, spans


class Encoder:
    """Holds one tokenizer per worker process."""

    tokenizer: Any = None
    eod_id: int = -1

    @classmethod
    def init(cls, tokenizer_dir: str, eod_id: int, tok: Any = None) -> None:
        cls.tokenizer = tok if tok is not None else load_tokenizer(tokenizer_dir)
        cls.eod_id = eod_id

    @classmethod
    def pretrain(cls, text: str) -> list[int]:
        """As Megatron-LM's preprocess_data.py: the tokenizer's own special tokens (BOS where
        its post-processor adds one), then the EOD unless the post-processor appended it."""
        ids = list(cls.tokenizer(text, add_special_tokens=True)["input_ids"])
        if not ids or ids[-1] != cls.eod_id:
            ids.append(cls.eod_id)
        return ids

    @classmethod
    def render_spans(cls, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """The conversation rendered with the chat template, and its assistant spans."""
        tok = cls.tokenizer

        def render(msgs: list[dict[str, str]], add_generation_prompt: bool) -> str:
            if not msgs:
                return ""
            return tok.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=add_generation_prompt
            )

        return assistant_spans(render, messages)

    @classmethod
    def conversation(cls, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        tok = cls.tokenizer
        text, spans = cls.render_spans(messages)
        # The template writes BOS itself: no special tokens added here.
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = conversation_labels(text, spans, enc["offset_mapping"], ids)
        bos = tok.bos_token_id
        while bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
            ids, labels = ids[1:], labels[1:]  # a template that writes BOS twice
        return ids, labels


def encode_stream(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    tokenizer_dir: str,
    workers: int,
    eod_id: int,
    tok: Any = None,
) -> Iterator[Any]:
    if workers <= 1:
        Encoder.init(tokenizer_dir, eod_id, tok)
        yield from map(fn, items)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=Encoder.init, initargs=(tokenizer_dir, eod_id)) as pool:
        yield from pool.imap(fn, items, chunksize=64)
