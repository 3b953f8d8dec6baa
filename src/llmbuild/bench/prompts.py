"""Random prompts of an exact token length for a given tokenizer, reproducible from a seed.

A prompt's length is counted as the server counts it: ``encode(text, add_special_tokens=True)``
(so a tokenizer that adds BOS spends one token of the length on it). Tokens are drawn from the
vocabulary's printable ASCII tokens that survive a decode/encode round trip, preferring
space-prefixed words (" the", " cat"): with byte-level BPE each is its own pre-token, so a
string of n of them is exactly n tokens. Any remaining drift is corrected by re-encoding and
trimming or topping up, and the final length is always checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llmbuild.errors import UserError

MIN_WORDS = 16
MAX_TRIES = 50


def load_tokenizer(model_dir: str | Path) -> Any:
    """``tokenizers.Tokenizer`` from ``model_dir/tokenizer.json`` (or a tokenizer.json path)."""
    from tokenizers import Tokenizer

    p = Path(model_dir)
    f = p if p.is_file() else p / "tokenizer.json"
    if not f.is_file():
        raise UserError(
            "no tokenizer.json; point --tokenizer at the served model's directory",
            path=p,
            field="tokenizer",
        )
    try:
        return Tokenizer.from_file(str(f))
    except Exception as exc:
        raise UserError(f"cannot load tokenizer: {exc}", path=f) from None


class PromptMaker:
    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.n_special = len(tokenizer.encode("", add_special_tokens=True).ids)
        self.candidates = self._candidates()
        if len(self.candidates) == 0:
            raise UserError(
                "tokenizer has no printable ASCII tokens to build prompts from", field="tokenizer"
            )

    def _candidates(self) -> np.ndarray:
        tok = self.tok
        special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        ids = [i for i in range(tok.get_vocab_size(with_added_tokens=True)) if i not in special]
        texts = [tok.decode([i]) for i in ids]
        keep = [
            (i, s) for i, s in zip(ids, texts, strict=True) if s and s.isascii() and s.isprintable()
        ]
        encoded = tok.encode_batch([s for _, s in keep], add_special_tokens=False)
        words, others = [], []
        for (i, s), enc in zip(keep, encoded, strict=True):
            if enc.ids != [i]:
                continue
            (words if s[0] == " " and s[1:].isalpha() else others).append(i)
        return np.array(words if len(words) >= MIN_WORDS else words + others, dtype=np.int64)

    def length(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=True).ids)

    def random_ids(self, n: int, rng: np.random.Generator) -> list[int]:
        return [int(i) for i in rng.choice(self.candidates, size=n)] if n > 0 else []

    def make(
        self, length: int, rng: np.random.Generator, prefix_ids: list[int] | None = None
    ) -> str:
        """A prompt of exactly ``length`` tokens, starting with ``prefix_ids`` if given."""
        prefix = list(prefix_ids or [])
        want = length - self.n_special - len(prefix)
        if want < 1:
            raise UserError(
                f"input length {length} leaves no room for a prompt after "
                f"{self.n_special} special and {len(prefix)} prefix tokens",
                field="--input-len",
            )
        ids = self.random_ids(want, rng)
        for _ in range(MAX_TRIES):
            text = self.tok.decode(prefix + ids, skip_special_tokens=False)
            n = self.length(text)
            if n == length:
                return text
            if n > length:
                ids = ids[: max(len(ids) - (n - length), 1)]
            else:
                ids = ids + self.random_ids(length - n, rng)
        raise UserError(
            f"could not make a prompt of exactly {length} tokens with this tokenizer",
            field="--input-len",
        )

    def prefix(self, length: int, rng: np.random.Generator) -> list[int]:
        """Token ids of a shared prefix of ``length`` tokens (no special tokens)."""
        if length <= 0:
            return []
        text = self.make(length + self.n_special, rng)
        return self.tok.encode(text, add_special_tokens=False).ids
