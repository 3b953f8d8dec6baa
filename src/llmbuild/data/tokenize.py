"""Pretrain and instruction handlers: text -> token ids (and loss labels) -> Megatron shards.

The shards are megatron.core indexed datasets written with its own IndexedDatasetBuilder, so
Megatron reads them as it reads its own. A shard directory holds ``meta.json`` naming its
kind and prefixes, which is the contract with ``llmbuild train``.

Special ids come from the tokenizer directory, never from a literal token:

- end of document (EOD): ``--eod-token`` (``data.eod_token``) when given, else the tokenizer's
  ``eos_token``, else ``generation_config.json``'s ``eos_token_id`` (the first of a list), else
  ``config.json``'s;
- pad: the tokenizer's ``pad_token``, else the EOD;
- BOS: pretraining documents are encoded as Megatron-LM's ``tools/preprocess_data.py`` encodes
  them with a HF tokenizer, with the tokenizer's own special tokens (Llama's post-processor
  prepends BOS, Qwen's adds nothing), then the EOD appended (once). Conversations are rendered
  with the chat template, which writes BOS itself, and encoded without special tokens.
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
PRETRAIN_PREFIX = "text_document"
SFT_PREFIXES = {"input_ids": "input_ids_document", "labels": "labels_document"}
Progress = Callable[[int, int], None]  # (documents done, tokens done)


def load_tokenizer(tokenizer_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)


@dataclass(frozen=True)
class SpecialTokens:
    """The special ids a shard set is made with, and where each came from."""

    eod_id: int
    eod_token: str
    eod_source: str
    pad_id: int
    pad_token: str
    pad_source: str
    bos_id: int | None  # what the tokenizer's post-processor prepends (None: nothing)
    bos_token: str | None
    vocab_size: int  # len(tokenizer)

    def meta(self, bos: tuple[int | None, str | None, str]) -> dict[str, Any]:
        """The meta.json keys; ``bos`` is (id, token, source) of what the documents start with."""
        return {
            "eod_id": self.eod_id,
            "eod_token": self.eod_token,
            "pad_id": self.pad_id,
            "pad_token": self.pad_token,
            "bos_id": bos[0],
            "bos_token": bos[1],
            "special_token_sources": {
                "eod_id": self.eod_source,
                "pad_id": self.pad_source,
                "bos_id": bos[2],
            },
        }


def _single_token_id(tok: Any, token: str) -> int | None:
    """The id of ``token`` if it is exactly one token of the vocabulary, else None."""
    tid = tok.convert_tokens_to_ids(token)
    if not isinstance(tid, int) or tid < 0:
        return None
    return tid if tok.convert_ids_to_tokens(tid) == token else None


def _config_eos(tokenizer_dir: Path, name: str) -> int | None:
    path = tokenizer_dir / name
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise UserError(
            f"cannot read it ({exc}); fix the file or remove it", path=path, field="eos_token_id"
        ) from None
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) else None


def _post_processor_prefix(tok: Any) -> list[int]:
    """The ids the tokenizer prepends to a text with add_special_tokens=True (BOS or nothing)."""
    for probe in ("a", "Hello world", "0"):
        plain = tok(probe, add_special_tokens=False)["input_ids"]
        full = tok(probe, add_special_tokens=True)["input_ids"]
        n = len(plain)
        for start in range(len(full) - n + 1):
            if n and full[start : start + n] == plain:
                return full[:start]
    return []


def resolve_special_tokens(
    tokenizer_dir: str | Path, eod_token: str | None = None, tok: Any = None
) -> SpecialTokens:
    """EOD, pad and BOS of the tokenizer in ``tokenizer_dir`` (see the module docstring)."""
    d = Path(tokenizer_dir)
    tok = tok if tok is not None else load_tokenizer(d)
    size = len(tok)

    def token_of(tid: int, source: str) -> str:
        token = tok.convert_ids_to_tokens(tid) if 0 <= tid < size else None
        if token is None:
            raise UserError(
                f"{source} {tid} is not an id of the tokenizer ({size} tokens); fix it or set "
                "data.eod_token to the end-of-document token",
                path=d,
                field="eos_token_id",
            )
        return token

    if eod_token:
        eod_id = _single_token_id(tok, eod_token)
        if eod_id is None:
            n = len(tok(eod_token, add_special_tokens=False)["input_ids"])
            raise UserError(
                f"{eod_token!r} is not a single token of the vocabulary of {d} (it encodes as "
                f"{n} tokens); set data.eod_token to a token of the vocabulary"
                + (f", e.g. its eos_token {tok.eos_token!r}" if tok.eos_token else ""),
                field="--eod-token",
            )
        eod, source = eod_token, "--eod-token (data.eod_token)"
    elif tok.eos_token and _single_token_id(tok, tok.eos_token) is not None:
        eod, eod_id = tok.eos_token, _single_token_id(tok, tok.eos_token)
        source = "the tokenizer's eos_token"
    else:
        for name in ("generation_config.json", "config.json"):
            eod_id = _config_eos(d, name)
            if eod_id is not None:
                source = f"{name} eos_token_id"
                eod = token_of(eod_id, source)
                break
        else:
            raise UserError(
                "the tokenizer has no eos_token (nor does generation_config.json or config.json "
                "name an eos_token_id), so documents cannot be ended; set data.eod_token to the "
                "end-of-document token of the vocabulary (or eos_token here)",
                path=d / "tokenizer_config.json",
                field="eos_token",
            )
    assert eod_id is not None
    if tok.pad_token_id is not None:
        pad_id, pad, pad_source = tok.pad_token_id, tok.pad_token, "the tokenizer's pad_token"
    else:
        pad_id, pad, pad_source = eod_id, eod, "eod (the tokenizer has no pad_token)"
    prefix = _post_processor_prefix(tok)
    bos_id = prefix[-1] if prefix else None
    return SpecialTokens(
        eod_id=int(eod_id),
        eod_token=eod,
        eod_source=source,
        pad_id=int(pad_id),
        pad_token=pad,
        pad_source=pad_source,
        bos_id=bos_id,
        bos_token=None if bos_id is None else tok.convert_ids_to_tokens(bos_id),
        vocab_size=size,
    )


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


class _Encoder:
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
    def conversation(cls, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        tok = cls.tokenizer

        def render(msgs: list[dict[str, str]], add_generation_prompt: bool) -> str:
            if not msgs:
                return ""
            return tok.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=add_generation_prompt
            )

        text, spans = assistant_spans(render, messages)
        # The template writes BOS itself: no special tokens added here.
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = conversation_labels(text, spans, enc["offset_mapping"], ids)
        bos = tok.bos_token_id
        while bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
            ids, labels = ids[1:], labels[1:]  # a template that writes BOS twice
        return ids, labels


def _encode_stream(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    tokenizer_dir: str,
    workers: int,
    eod_id: int,
    tok: Any = None,
) -> Iterator[Any]:
    if workers <= 1:
        _Encoder.init(tokenizer_dir, eod_id, tok)
        yield from map(fn, items)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_Encoder.init, initargs=(tokenizer_dir, eod_id)) as pool:
        yield from pool.imap(fn, items, chunksize=64)


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
    stream = _encode_stream(_Encoder.pretrain, docs, tokenizer_dir, workers, specials.eod_id, tok)
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
    stream = _encode_stream(
        _Encoder.conversation, convs, tokenizer_dir, workers, specials.eod_id, tok
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
