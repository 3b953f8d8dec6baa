"""A tiny byte-level BPE tokenizer for the bench tests (like the default model's)."""

from __future__ import annotations

import pytest

WORDS = (
    "the quick brown fox jumps over a lazy dog while seven bright stars watch "
    "quiet rivers carry old boats toward distant green hills and small towns"
).split()


def train_tokenizer(bos: bool = False):
    """A byte-level BPE like the tiny default model's (vocab 512); optionally adding BOS."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [
        " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) + f" {i}." for i in range(400)
    ]
    tok.train_from_iterator(texts, trainer=trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    assert tokenizers is not None
    return tok
