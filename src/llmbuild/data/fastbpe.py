"""Byte-level BPE through tiktoken's engine, where it provably gives the tokenizer's own ids.

A HF byte-level BPE tokenizer (GPT-2, Llama 3, Qwen2 and the embedded default's kind) is, in
``tokenizers``: added tokens split out, an optional normalizer, a split regex, the bytes of
each piece mapped to characters, then the BPE model merging adjacent symbols pair by pair,
lowest merge index first (leftmost on ties), and a post-processor adding BOS/EOS. tiktoken
runs the same pipeline on bytes, but decides merges by the *rank of the merged token*: any
adjacent pair whose concatenation is in its table may merge, lowest rank first. ``analyze``
builds tiktoken's table from the tokenizer and proves the two agree, or says why not:

- the pieces: the normalizer is none or NFC, the pre-tokenizer is ByteLevel (GPT-2's regex) or
  Split(regex, isolated) + ByteLevel without its regex, the regex one of ``PATTERNS`` (whose
  Unicode classes tests/data/test_fastbpe.py compares with the tokenizer's on every code
  point of planes 0-2), no prefix space; the post-processor adds fixed ids before and after;
- the merges: the rank of a merged token is the index of the one merge that makes it (no two
  merges make the same string), so wherever both engines see a real merge they order it
  alike. What tiktoken may do and ``tokenizers`` may not is merge a pair whose concatenation
  is a token but not that pair's merge ("ab"+"c" where the merge is "a"+"bc"). Such a pair
  can only cover exactly the bytes of a token t if running the BPE model on t's bytes alone
  passes through it, because merges inside t's span happen in the same order whatever
  surrounds it, until one crosses the span. So every token in the table is run through the
  tokenizer's own BPE model on its bytes alone: it must come out whole (then its last step
  was its own merge, never another split) or in three or more parts (then no two-part state
  ever covers it). Tokens that come out in two parts cannot be in the table; with
  ``ignore_merges`` (Llama 3: a piece that is a vocabulary token is taken whole) every
  vocabulary token must be, so such a tokenizer is refused;
- added tokens are tiktoken's special tokens, matched in the raw text. Where that matching is
  not provably the tokenizer's (lstrip/rstrip/single-word tokens, one a prefix of another,
  mixed normalization, or a normalizer on a document that is not ASCII), a document whose
  ids contain an added token is encoded again by the tokenizer itself; so is one that NFC
  would change, and one that is not valid UTF-8 text.

Each text's ids are then tiktoken's, mapped from ranks to the tokenizer's ids by a table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Split regexes known to mean the same in Oniguruma (tokenizers) and fancy-regex (tiktoken).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PATTERNS = {GPT2_PATTERN: "gpt2", LLAMA3_PATTERN: "llama3", QWEN2_PATTERN: "qwen2"}
# Never in a vocabulary; when a tokenizer has no added tokens, tiktoken still needs one
# (an empty special-token regex matches everywhere). A document holding it is re-encoded.
_SENTINEL = "\x00\x01llmbuild-no-added-token\x01\x00"
PROBES = (
    "Hello world",
    " leading space",
    "a\n\nb\tc  ",
    "Zahl 12345, ünïcödé ✓ 日本語",
    "",
    "  \n \r\n\t\u00a0\u3000x\u2028y\u0085z",
    "I'm you'RE he's WE'LL 1234567 ①②③ ٣٤٥ x²",
    "emoji 👩‍💻🇩🇪 e\u0301 Å\u030a \ufeffbom",
    "code: def f(x):\n    return x**2  # ok\n\n\n",
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character map (the ByteLevel pre-tokenizer's alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs to encode exactly as the tokenizer does (picklable)."""

    pattern: str
    ranks: dict[bytes, int]  # tiktoken's mergeable ranks
    specials: dict[str, int]  # added token content -> rank (>= special_floor)
    ids: np.ndarray  # rank -> the tokenizer's id
    special_floor: int  # ranks from here on are added tokens
    specials_exact: bool  # tiktoken's split on added tokens is the tokenizer's
    nfc: bool  # the tokenizer normalizes with NFC
    prefix: tuple[int, ...]  # what the post-processor puts before and after a text
    suffix: tuple[int, ...]
    backend_json: str  # the tokenizer itself, for documents the plan does not cover
    add_special_tokens: bool
    name: str  # the split regex's name


class Refused(Exception):
    """The tokenizer is not one tiktoken provably encodes alike (the message says why)."""


def _model_checks(model: dict[str, Any]) -> None:
    if model.get("type") != "BPE":
        raise Refused(f"model type {model.get('type')} is not BPE")
    if model.get("dropout") not in (None, 0, 0.0):
        raise Refused("BPE dropout is set")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise Refused("BPE has a continuing-subword prefix or end-of-word suffix")


def _pattern(pre: dict[str, Any] | None) -> str:
    if pre is None:
        raise Refused("no pre-tokenizer (not byte-level)")
    if pre.get("type") == "ByteLevel":
        if pre.get("add_prefix_space") or not pre.get("use_regex", True):
            raise Refused("ByteLevel pre-tokenizer with a prefix space or without its regex")
        return GPT2_PATTERN
    items = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not items or len(items) != 2:
        raise Refused(f"pre-tokenizer {pre.get('type')} is not a byte-level split")
    split, byte_level = items
    ok = (
        split.get("type") == "Split"
        and split.get("behavior") == "Isolated"
        and not split.get("invert")
        and "Regex" in (split.get("pattern") or {})
        and byte_level.get("type") == "ByteLevel"
        and not byte_level.get("add_prefix_space")
        and not byte_level.get("use_regex", True)
    )
    if not ok:
        raise Refused("pre-tokenizer is not Split(regex, isolated) + ByteLevel(no regex)")
    pattern = split["pattern"]["Regex"]
    if pattern not in PATTERNS:
        raise Refused("its split regex is not one of the known byte-level ones")
    return pattern


def _normalizer(norm: dict[str, Any] | None) -> bool:
    if norm is None:
        return False
    if norm.get("type") == "NFC":
        return True
    if norm.get("type") == "Sequence" and not norm.get("normalizers"):
        return False
    raise Refused(f"normalizer {norm.get('type')} (only none or NFC)")


def _post_processor(pp: dict[str, Any] | None, offsets: bool) -> None:
    if pp is None:
        return
    if pp.get("type") == "ByteLevel":
        if offsets and pp.get("trim_offsets"):
            raise Refused("the post-processor trims offsets (labels need untrimmed ones)")
        return
    if pp.get("type") == "Sequence":
        for item in pp.get("processors") or []:
            _post_processor(item, offsets)
        return
    if pp.get("type") == "TemplateProcessing":
        seqs = [x for x in pp.get("single", []) if "Sequence" in x]
        if len(seqs) == 1 and all("Sequence" in x or "SpecialToken" in x for x in pp["single"]):
            return
    raise Refused(f"post-processor {pp.get('type')} adds more than fixed ids")


def _isolated_parts(model: dict[str, Any], tokens: list[str]) -> np.ndarray:
    """How many symbols the BPE model leaves of each token's characters on their own."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    bare = Tokenizer(models.BPE(model["vocab"], merges, ignore_merges=False))
    bare.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # byte symbols are never spaces
    step = 4096
    texts = [" ".join(tokens[i : i + step]) for i in range(0, len(tokens), step)]
    counts = []
    for enc in bare.encode_batch(texts, add_special_tokens=False):
        counts.append(np.bincount(np.asarray(enc.word_ids, dtype=np.int64), minlength=step))
    return np.concatenate(counts)[: len(tokens)] if counts else np.zeros(0, dtype=np.int64)


def _byte_decoder(alphabet: dict[int, str]) -> Callable[[str], bytes | None]:
    """A byte-level token's bytes, or None when it has a character outside the alphabet."""
    table: dict[int, int | None] = {ord(c): b for b, c in alphabet.items()}
    for x in range(0x180):
        table.setdefault(x, None)  # dropped, so the length shows it

    def to_bytes(token: str) -> bytes | None:
        plain = token.translate(table)
        if len(plain) != len(token):
            return None
        try:
            return plain.encode("latin-1")
        except UnicodeEncodeError:
            return None

    return to_bytes


def _merges(model: dict[str, Any]) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def analyze(backend: Any, add_special_tokens: bool, offsets: bool = False) -> Plan:
    """The tiktoken plan of ``backend`` (a ``tokenizers.Tokenizer`` without truncation or
    padding); raises ``Refused`` naming what does not map. ``offsets``: the caller needs
    each token's start (instruction labels), so the tokenizer must not trim offsets."""
    data = json.loads(backend.to_str())
    model = data["model"]
    _model_checks(model)
    nfc = _normalizer(data.get("normalizer"))
    pattern = _pattern(data.get("pre_tokenizer"))
    _post_processor(data.get("post_processor"), offsets)
    vocab: dict[str, int] = model["vocab"]
    alphabet = bytes_to_unicode()
    missing = [b for b, c in alphabet.items() if c not in vocab]
    if missing:
        raise Refused(f"{len(missing)} of the 256 byte symbols are not in the vocabulary")
    merges = _merges(model)
    made_by: dict[str, int] = {}
    for i, (a, b) in enumerate(merges):
        if a + b in made_by:
            raise Refused(f"two merges make the same token {a + b!r}")
        made_by[a + b] = i
    ignore_merges = bool(model.get("ignore_merges"))
    to_bytes = _byte_decoder(alphabet)
    tokens, token_bytes = [], []
    for t in vocab:  # the merges' results; with ignore_merges every byte-level token
        if len(t) > 1 and (ignore_merges or t in made_by):
            raw = to_bytes(t)
            if raw is not None:
                tokens.append(t)
                token_bytes.append(raw)
    parts = _isolated_parts(model, tokens)
    n_merges = len(merges)
    ranks: dict[bytes, int] = {}
    ids: dict[int, int] = {}
    for b, c in alphabet.items():
        ranks[bytes([b])] = n_merges + b
        ids[n_merges + b] = vocab[c]
    extra = n_merges + 256
    for t, raw, n in zip(tokens, token_bytes, parts.tolist(), strict=True):
        if n == 1 and t in made_by:
            rank = made_by[t]  # whole on its own: its last step was its merge
        elif n >= 3 and ignore_merges:
            rank, extra = extra, extra + 1  # never covered by two parts: a whole-piece match
        elif ignore_merges:
            raise Refused(
                f"token {t!r} is in the vocabulary, taken whole when it is a piece, but the "
                "merges leave it in two parts"
            )
        else:
            continue  # the merges never make it, and a piece is never looked up whole
        ranks[raw] = rank
        ids[rank] = vocab[t]
    floor = max(ids) + 1
    added = [a for a in data.get("added_tokens") or [] if a.get("content")]
    specials = {a["content"]: floor + k for k, a in enumerate(added)}
    for a in added:
        ids[specials[a["content"]]] = a["id"]
    specials[_SENTINEL] = floor + len(added)
    ids[floor + len(added)] = -1
    contents = [a["content"] for a in added]
    exact = (
        not any(a.get("lstrip") or a.get("rstrip") or a.get("single_word") for a in added)
        and len({bool(a.get("normalized")) for a in added}) <= 1
        and not any(x != y and y.startswith(x) for x in contents for y in contents)
    )
    table = np.full(max(ids) + 1, -1, dtype=np.int64)
    for rank, tid in ids.items():
        table[rank] = tid
    prefix, suffix = _affixes(backend, add_special_tokens)
    plan = Plan(
        pattern=pattern,
        ranks=ranks,
        specials=specials,
        ids=table,
        special_floor=floor,
        specials_exact=exact,
        nfc=nfc,
        prefix=prefix,
        suffix=suffix,
        backend_json=backend.to_str(),
        add_special_tokens=add_special_tokens,
        name=PATTERNS[pattern],
    )
    return plan


def _affixes(backend: Any, add_special_tokens: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if not add_special_tokens:
        return (), ()
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start]), tuple(full[start + len(plain) :])
    raise Refused("the post-processor does not keep a text's ids together")


class Encoder:
    """Encodes texts with a ``Plan``: tiktoken where it is exact, else the tokenizer."""

    def __init__(self, plan: Plan) -> None:
        import tiktoken
        from tokenizers import Tokenizer

        self.plan = plan
        self.enc = tiktoken.Encoding(
            f"llmbuild-{plan.name}",
            pat_str=plan.pattern,
            mergeable_ranks=plan.ranks,
            special_tokens=plan.specials,
        )
        self.core = self.enc._core_bpe
        self.allowed = set(plan.specials)
        self.backend = Tokenizer.from_str(plan.backend_json)
        self.normalizer = self.backend.normalizer
        lengths = np.zeros(plan.ids.size, dtype=np.int64)
        for token, rank in plan.ranks.items():
            lengths[rank] = len(token)
        for content, rank in plan.specials.items():
            lengths[rank] = len(content.encode("utf-8"))
        self.byte_lengths = lengths  # rank -> the token's length in bytes
        self.prefix = np.asarray(plan.prefix, dtype=np.int64)
        self.suffix = np.asarray(plan.suffix, dtype=np.int64)
        self.fallbacks = 0  # documents the tokenizer itself encoded

    def table(self, dtype: Any) -> np.ndarray:
        return self.plan.ids.astype(dtype)

    def ranks(self, text: str) -> np.ndarray | None:
        """tiktoken's ranks for ``text`` (no post-processor), or None where the plan does
        not provably give the tokenizer's ids for it."""
        p = self.plan
        try:
            ranks = np.frombuffer(
                self.core.encode_to_tiktoken_buffer(text, self.allowed), dtype=np.uint32
            )
        except (UnicodeEncodeError, ValueError):
            return None
        ascii_text = text.isascii()
        if p.nfc and not ascii_text and self.normalizer.normalize_str(text) != text:
            return None
        if ranks.size and int(ranks.max()) >= p.special_floor:
            if not p.specials_exact or (p.nfc and not ascii_text):
                return None
            if (ranks == p.special_floor + len(p.specials) - 1).any():
                return None  # the sentinel
        return ranks

    def encode(self, text: str) -> np.ndarray:
        """The tokenizer's ids for ``text`` (with the post-processor's, when asked), int64."""
        ranks = self.ranks(text)
        if ranks is None:
            self.fallbacks += 1
            ids = self.backend.encode(text, add_special_tokens=self.plan.add_special_tokens).ids
            return np.asarray(ids, dtype=np.int64)
        ids = self.plan.ids[ranks]
        if self.prefix.size or self.suffix.size:
            ids = np.concatenate((self.prefix, ids, self.suffix))
        return ids


def starts_in_bytes(enc: Encoder, ranks: np.ndarray) -> np.ndarray:
    """Where each token starts, in bytes of the text's UTF-8."""
    lengths = enc.byte_lengths[ranks]
    return np.cumsum(lengths) - lengths


def byte_spans(text: str, spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans of ``text`` as spans of its UTF-8 bytes. A token (the tokenizer's
    offsets give the character its first byte belongs to) starts inside a character span
    exactly when its first byte is inside the byte span."""
    if text.isascii():
        return list(spans)
    return [(len(text[:s].encode("utf-8")), len(text[:e].encode("utf-8"))) for s, e in spans]


def plan_for(
    tok: Any,
    backend: Any,
    add_special_tokens: bool,
    samples: Iterable[str] = (),
    offsets: bool = False,
) -> tuple[Plan | None, str]:
    """(the plan, "") when tiktoken provably encodes as ``tok``, else (None, why not); the
    probes and ``samples`` are compared too, as a guard."""
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return None, "tiktoken is not installed"
    try:
        plan = analyze(backend, add_special_tokens, offsets)
        enc = Encoder(plan)
    except Refused as exc:
        return None, str(exc)
    for text in (*PROBES, *samples):
        want = list(tok(text, add_special_tokens=add_special_tokens)["input_ids"])
        if enc.encode(text).tolist() != want:
            return None, f"tiktoken's ids differ from the tokenizer's on {text!r}"
    return plan, ""
