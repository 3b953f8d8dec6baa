"""Fixtures for quant tests: a tiny random Llama (byte-level BPE tokenizer, chat template).

Same shape as the embedded default (vocab 512, hidden 128, 4 layers, 4 heads of 32, 2 kv heads).
Made here rather than with llmbuild.model so these tests need only the quantize stack.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SPECIALS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}<|end|>\n<|assistant|>\n"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization maps floating point weights to small integers.",
    "SmoothQuant migrates activation outliers into the weights.",
    "Give three tips for staying healthy: eat well, sleep, exercise.",
    "What is the capital of France? The capital of France is Paris.",
] * 20


def make_tokenizer(out: Path, vocab_size: int = 512) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": "<|end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "additional_special_tokens": ["<|user|>", "<|assistant|>"],
                "model_max_length": 512,
                "chat_template": CHAT_TEMPLATE,
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "eos_token": "<|end|>",
                "pad_token": "<|endoftext|>",
                "additional_special_tokens": ["<|user|>", "<|assistant|>"],
            },
            indent=2,
        )
    )


def make_tiny_llama(out: str | Path, seed: int = 0, vocab_size: int = 512) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    make_tokenizer(out, vocab_size)
    tok = json.loads((out / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=ids["<|end|>"],
        pad_token_id=ids["<|endoftext|>"],
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg).to(torch.float32)
    # Random RMSNorm gains (not all ones), so smoothing has something to fold into.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight"):
                p.copy_(0.5 + torch.rand_like(p))
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        eos_token_id=[ids["<|end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
        max_new_tokens=32,
    ).save_pretrained(out)
    return out


CALIB = [
    {
        "instruction": "Give three tips for staying healthy.",
        "input": "",
        "output": "Eat well, sleep, exercise.",
    },
    {"instruction": "Convert the letters to capitals.", "input": "a b c", "output": "A B C"},
    {"text": "Quantization maps floating point weights to small integers."},
    {
        "instruction": "What is the capital of France?",
        "input": "",
        "output": "The capital of France is Paris.",
    },
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "fp32")


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in CALIB * 4))
    return p
