"""tiktoken's engine gives exactly the tokenizer's ids where data/fastbpe.py says it does.

For every registered family's tokenizer kind (tests/families.py: Llama 3 and Qwen2.5 byte-level
BPE with their split regexes, Llama 2 and Mistral SentencePiece) and the embedded default's
(GPT-2's byte-level regex): the plan is made or refused with its reason, and where made, the
ids equal the HF tokenizer's on text with unicode, whitespace runs, NFC-changing characters
and the family's special tokens. The proof's cases are checked on hand-made merges, and the
split regexes' Unicode classes are compared with the tokenizer's on every code point of
planes 0 to 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tiktoken")
pytest.importorskip("transformers")

from llmbuild.data import fastbpe  # noqa: E402
from llmbuild.data import tokenize as tk  # noqa: E402
from llmbuild.data.batched import fast_backend  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import families  # noqa: E402

pytestmark = pytest.mark.unit

EDGE = [
    "",
    " ",
    "x",
    "Hello, world! I'm here; you're THERE. We'LL see 1234567 and 12.5%.",
    "  two  spaces\tand\ttabs\n\n\nthree newlines \r\n crlf \r lone cr  ",
    "trailing spaces   ",
    "\u00a0nbsp\u3000ideographic\u2028line-sep\u2029para\u0085nel\u200bzwsp\ufeffbom",
    "Café au lait, naïve façade — and a snowman ☃; 日本語のテキスト; 한국어; Ελληνικά; עברית",
    "decomposed e\u0301 and A\u030a, Hangul \u1100\u1161\u11a8, ① ² ٣ ½ 𝟘 𝔄",
    "emoji 👩\u200d💻 🇩🇪 🏳️\u200d🌈 and lone combining \u0301 at the start",
    "code:\n    def f(x):\n        return x ** 2  # ok\n\n\t}\n",
    "numbers 0 00 000 0000 3.14159 -42 1e10 ١٢٣ 一二三",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE",
]
FAMILY_TEXT = {
    "llama3": ["<|begin_of_text|>a<|eot_id|>b<|start_header_id|>user<|end_header_id|>\n\nhi"],
    "qwen2.5": ["<|im_start|>user\nhi<|im_end|>\n<tool_call>x</tool_call><|endoftext|>"],
    "tiny": ["<|user|>\nhi<|end|>\n<|assistant|>\nok<|end|>", "an <|end|> inside"],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The embedded default's kind: byte-level BPE with GPT-2's regex, specials in the vocab."""
    from llmbuild.data.synth import corpus_documents
    from llmbuild.model.tiny import save_tokenizer, train_tokenizer

    d = tmp_path_factory.mktemp("tiny")
    save_tokenizer(train_tokenizer(corpus_documents(200, 0), 512), d, 512)
    return d


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fastbpe")
    names = ("llama3", "qwen2.5", "llama2", "mistral")
    return {**{n: families.build_tokenizer(n, root / n) for n in names}, "tiny": tiny}


def _texts(name: str) -> list[str]:
    from llmbuild.data.synth import corpus_documents

    return list(corpus_documents(30, 3)) + EDGE + FAMILY_TEXT.get(name, [])


@pytest.mark.parametrize(
    "name,engine",
    [
        ("llama3", "llama3"),
        ("qwen2.5", "qwen2"),
        ("tiny", "gpt2"),
        ("llama2", None),
        ("mistral", None),
    ],
)
def test_each_family_kind_gets_exact_ids_or_a_reason(built, name, engine):
    tok = tk.load_tokenizer(built[name])
    backend = fast_backend(tok, add_special_tokens=True)
    plan, why = fastbpe.plan_for(tok, backend, add_special_tokens=True)
    if engine is None:
        assert plan is None and "pre-tokenizer" in why, why  # SentencePiece: Metaspace
        return
    assert plan is not None, why
    assert plan.name == engine
    enc = fastbpe.Encoder(plan)
    for text in _texts(name):
        want = tok(text, add_special_tokens=True)["input_ids"]
        assert enc.encode(text).tolist() == want, text[:80]
    if name == "qwen2.5":  # NFC: text that NFC changes goes to the tokenizer itself
        assert enc.fallbacks >= 1
    elif name == "llama3":  # exact added-token matching: no document needed the tokenizer
        assert enc.fallbacks == 0


def _byte_level(merges: list[tuple[str, str]], extra: list[str], ignore_merges: bool) -> str:
    """A byte-level BPE tokenizer.json: the 256 byte symbols, ``extra`` tokens, ``merges``."""
    vocab = {c: i for i, c in enumerate(fastbpe.bytes_to_unicode().values())}
    for t in extra:
        vocab[t] = len(vocab)
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        },
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": [list(m) for m in merges],
        },
    }
    return json.dumps(spec)


def test_a_token_the_merges_leave_in_two_parts():
    """ "abc" is a token made by (ab, c), but "bc" merges first, so the merges leave it as
    (a, bc), a pair tiktoken would merge and the tokenizer would not. Without ignore_merges
    it is left out of tiktoken's table and both give [a, bc]; with ignore_merges (a piece
    that is a token is taken whole) it must be in the table, so the plan is refused."""
    from tokenizers import Tokenizer

    merges = [("b", "c"), ("a", "b"), ("ab", "c")]
    spec = _byte_level(merges, ["bc", "ab", "abc"], ignore_merges=False)
    backend = Tokenizer.from_str(spec)
    plan = fastbpe.analyze(backend, add_special_tokens=False)
    enc = fastbpe.Encoder(plan)
    for text in ["abc", "xabc abcd", "ab bc abc"]:
        assert enc.encode(text).tolist() == backend.encode(text).ids
    assert b"abc" not in plan.ranks
    spec = _byte_level(merges, ["bc", "ab", "abc"], ignore_merges=True)
    with pytest.raises(fastbpe.Refused, match="'abc'.*two parts"):
        fastbpe.analyze(Tokenizer.from_str(spec), add_special_tokens=False)


def test_two_merges_making_one_token_are_refused():
    from tokenizers import Tokenizer

    merges = [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]
    spec = _byte_level(merges, ["ab", "bc", "abc"], ignore_merges=False)
    with pytest.raises(fastbpe.Refused, match="two merges make the same token 'abc'"):
        fastbpe.analyze(Tokenizer.from_str(spec), add_special_tokens=False)


def test_unknown_regex_and_prefix_space_are_refused(built):
    from tokenizers import Tokenizer

    data = json.loads((built["llama3"] / "tokenizer.json").read_text())
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\S+|\s+"
    with pytest.raises(fastbpe.Refused, match="split regex"):
        fastbpe.analyze(Tokenizer.from_str(json.dumps(data)), True)
    spec = json.loads(_byte_level([], [], False))
    spec["pre_tokenizer"]["add_prefix_space"] = True
    with pytest.raises(fastbpe.Refused, match="prefix space"):
        fastbpe.analyze(Tokenizer.from_str(json.dumps(spec)), False)


def test_refused_plan_writes_the_same_shards_with_the_tokenizer(tiny, tmp_path, monkeypatch):
    tok = tk.load_tokenizer(tiny)
    docs = _texts("tiny")
    for engine in ("tiktoken", "tokenizers"):
        if engine == "tokenizers":
            monkeypatch.setattr(fastbpe, "plan_for", lambda *a, **k: (None, "said no"))
        out = tmp_path / engine
        out.mkdir()
        stats = tk.tokenize_pretrain(docs, str(tiny), out, 64, workers=1, tok=tok)
        assert stats.engine.startswith(engine), stats.engine
    assert stats.engine == "tokenizers: said no"
    for ext in (".bin", ".idx"):
        a = (tmp_path / "tiktoken" / f"text_document{ext}").read_bytes()
        assert a == (tmp_path / "tokenizers" / f"text_document{ext}").read_bytes()


def _code_points(plane_end: int) -> list[str]:
    return [chr(c) for c in range(0x20, plane_end) if not 0xD800 <= c < 0xE000]


@pytest.mark.parametrize("pattern", list(fastbpe.PATTERNS))
def test_split_regex_classes_agree_on_every_code_point(tiny, pattern):
    """Oniguruma (tokenizers) and fancy-regex (tiktoken) read \\p{L}, \\p{N} and \\s from
    their own Unicode tables: every code point of planes 0-2, after a letter, a digit, a
    space and punctuation, splits (and so encodes) alike."""
    from tokenizers import Tokenizer

    data = json.loads((tiny / "tokenizer.json").read_text())
    data["normalizer"] = None
    data["added_tokens"] = []
    data["post_processor"] = None
    data["model"]["ignore_merges"] = False
    data["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated"}
            | {"invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
            | {"trim_offsets": False},
        ],
    }
    backend = Tokenizer.from_str(json.dumps(data))
    enc = fastbpe.Encoder(fastbpe.analyze(backend, add_special_tokens=False))
    chars = _code_points(0x30000)
    step = 8192
    texts = [
        "".join(f"a{c}1{c} {c}" for c in chars[i : i + step]) for i in range(0, len(chars), step)
    ]
    got = [enc.plan.ids[enc.core.encode_ordinary(t)] for t in texts]
    want = backend.encode_batch_fast(texts, add_special_tokens=False)
    for g, w in zip(got, want, strict=True):
        if not np.array_equal(g, w.ids):
            k = next(i for i, (x, y) in enumerate(zip(g, w.ids, strict=False)) if x != y)
            near = backend.decode(w.ids[max(k - 3, 0) : k + 3])
            pytest.fail(f"{fastbpe.PATTERNS[pattern]}: tiktoken splits differently at {near!r}")
