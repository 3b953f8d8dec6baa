"""Deterministic English-like inputs for the tokenization benchmark (tokenize_vs_megatron.py).

A pretraining JSONL of a given size (Zipf-distributed pseudo-words in sentences and
paragraphs, digits and punctuation, ~8.7 kB per document like the web text the issue was
measured on), a 32k byte-level BPE tokenizer trained on its first megabytes (the embedded
default's builder, so it has the default's special tokens and chat template), and an Alpaca
instruction set made from the same words.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from itertools import accumulate
from pathlib import Path

_ONSETS = "b c d f g h j k l m n p r s t v w y z br ch cl cr dr fl fr gl gr pl pr sh sl sp st th tr"
_ONSETS = _ONSETS.split() + ["wh"]
_VOWELS = "a e i o u ai ea ee ie oo ou".split()
_CODAS = ["", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "ck", "rt", "m", "sh"]


def _vocabulary(rng: random.Random, n: int) -> list[str]:
    words: dict[str, None] = {}
    common = "the of and to a in is it that was for on are as with be at by this from".split()
    words.update(dict.fromkeys(common))
    while len(words) < n:
        syllables = rng.choices([1, 2, 3, 4], weights=[6, 5, 2, 1])[0]
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        words[w + rng.choice(_CODAS)] = None
    return list(words)


class Words:
    """Sentences and paragraphs of Zipf-distributed pseudo-words, from a seed."""

    def __init__(self, seed: int = 0, vocabulary: int = 200000):
        self.rng = random.Random(seed)
        self.words = _vocabulary(self.rng, vocabulary)
        self.cum = list(accumulate(1.0 / (i + 2.7) for i in range(len(self.words))))

    def sentence(self) -> str:
        rng = self.rng
        n = rng.randint(6, 28)
        ws = rng.choices(self.words, cum_weights=self.cum, k=n)
        if rng.random() < 0.2:
            ws[rng.randrange(n)] = str(rng.randint(0, 99999))
        if rng.random() < 0.3:
            ws[rng.randrange(n)] += ","
        text = " ".join(ws)
        return text[0].upper() + text[1:] + rng.choice(".....?!")

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(2, 9)))

    def document(self) -> str:
        paras, size = [], 0
        target = self.rng.lognormvariate(8.75, 0.7)  # median ~6.3 kB, mean ~8 kB
        while size < target:
            paras.append(self.paragraph())
            size += len(paras[-1]) + 2
        return "\n\n".join(paras)


def documents(seed: int = 0) -> Iterator[str]:
    words = Words(seed)
    while True:
        yield words.document()


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """A JSONL corpus of about ``megabytes`` MB; returns the number of documents."""
    limit, size, n = int(megabytes * 1e6), 0, 0
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for doc in documents(seed):
            line = json.dumps({"text": doc}) + "\n"
            fh.write(line)
            size += len(line)
            n += 1
            if size >= limit:
                break
    tmp.rename(path)
    return n


def write_alpaca(path: Path, megabytes: float, seed: int = 1) -> int:
    """Alpaca records (instruction, input, output) of about ``megabytes`` MB."""
    words = Words(seed)
    limit, size, n = int(megabytes * 1e6), 0, 0
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        while size < limit:
            rec = {
                "instruction": words.sentence(),
                "input": words.paragraph() if words.rng.random() < 0.5 else "",
                "output": "\n\n".join(words.paragraph() for _ in range(words.rng.randint(1, 4))),
            }
            line = json.dumps(rec) + "\n"
            fh.write(line)
            size += len(line)
            n += 1
    tmp.rename(path)
    return n


def write_tokenizer(corpus: Path, out_dir: Path, vocab_size: int = 32000, mb: float = 8) -> None:
    """A byte-level BPE tokenizer trained on the first ``mb`` MB of the corpus."""
    from llmbuild.model.tiny import save_tokenizer, train_tokenizer

    def texts() -> Iterator[str]:
        size = 0
        with corpus.open(encoding="utf-8") as fh:
            for line in fh:
                size += len(line)
                yield json.loads(line)["text"]
                if size >= mb * 1e6:
                    return

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_tokenizer(train_tokenizer(texts(), vocab_size), tmp, model_max_length=4096)
    tmp.rename(out_dir)
