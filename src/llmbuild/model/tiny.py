"""The embedded default model: a tiny Llama with a byte-level BPE tokenizer trained locally.

Nothing is downloaded. The tokenizer is trained with the `tokenizers` library on the
pretraining corpus; the model is randomly initialised with a fixed seed and saved as
safetensors with every file a server needs (tokenizer files, chat template, generation
config).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from llmbuild.errors import UserError

SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
EOD, END_OF_TURN = "<|endoftext|>", "<|end|>"
# Renders "<|role|>\n{content}<|end|>\n" per turn and "<|assistant|>\n" as the generation
# prompt; prefix-stable, so the instruction handler can mask every prompt token exactly.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' + '\n' }}{% endif %}"
)


@dataclass(frozen=True, kw_only=True)
class TinySpec:
    """The model; the fields a config key sets (model.tiny.*) have their defaults in the schema
    only (``llmbuild model tiny`` reads them there)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_position_embeddings: int
    seed: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}",
                field="model.num_heads",
            )
        head_dim = self.hidden_size // self.num_heads
        if head_dim < 32 or head_dim % 16:
            raise UserError(
                f"head_dim {head_dim} is not served by vLLM's CPU attention; "
                "use hidden_size/num_heads in 32, 48, 64, 80, 96, 112, 128...",
                field="model.hidden_size",
            )
        if self.num_heads % self.num_kv_heads:
            raise UserError(
                "num_heads must be a multiple of num_kv_heads", field="model.num_kv_heads"
            )
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise UserError(
                f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} for a byte-level tokenizer",
                field="model.vocab_size",
            )


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer (the GPT-2/Llama-3 family's kind) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok, out_dir: Path, model_max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json (with the chat template), special_tokens_map.json."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END_OF_TURN,
        pad_token=EOD,
        unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOD, END_OF_TURN)],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    # Keep the template inside tokenizer_config.json too (transformers 4 and most servers read
    # it there; 5 writes chat_template.jinja), and name the class every version knows.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    # Older and newer transformers disagree on writing the map; servers look for it.
    smap = out_dir / "special_tokens_map.json"
    if not smap.exists():
        smap.write_text(
            json.dumps(
                {
                    "eos_token": END_OF_TURN,
                    "pad_token": EOD,
                    "additional_special_tokens": SPECIAL_TOKENS[1:4],
                },
                indent=2,
            )
            + "\n"
        )


def make_model(spec: TinySpec, tokenizer_dir: Path, out_dir: Path) -> dict[str, object]:
    """Random-init LlamaForCausalLM saved as float32 safetensors beside its tokenizer."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)
    if len(tok) > spec.vocab_size:
        raise UserError(
            f"tokenizer has {len(tok)} tokens > vocab_size {spec.vocab_size}",
            field="model.vocab_size",
        )
    eod = tok.convert_tokens_to_ids(EOD)
    eot = tok.convert_tokens_to_ids(END_OF_TURN)
    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=spec.rope_theta,
        rms_norm_eps=spec.rms_norm_eps,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=eod,
        eos_token_id=eot,
        pad_token_id=eod,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=eod, eos_token_id=[eot, eod], pad_token_id=eod, do_sample=False
    )
    model.save_pretrained(str(out_dir), safe_serialization=True)
    for src in tokenizer_dir.iterdir():
        shutil.copyfile(src, out_dir / src.name)
    n_params = sum(p.numel() for p in model.parameters())
    return {"parameters": n_params, "spec": asdict(spec)}
