"""The special ids a shard set is made with, from the tokenizer directory (never a literal).

- end of document (EOD): ``--eod-token`` (``data.eod_token``) when given, else the tokenizer's
  ``eos_token``, else ``generation_config.json``'s ``eos_token_id`` (the first of a list), else
  ``config.json``'s;
- pad: the tokenizer's ``pad_token``, else the EOD;
- BOS: what the tokenizer's post-processor prepends (Llama's BOS, Qwen's nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError


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
