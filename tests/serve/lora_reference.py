"""Helpers for test_lora_vllm.py, run with the train env's interpreter (torch, peft).

``megatron-lora BASE OUT --r R --alpha A [--seed S]`` writes a random Megatron LoRA adapter
for the HF model at BASE, in the layout convert/lora.py documents (every module of every
layer; B is not zero). ``greedy BASE PEFT_DIR --new-tokens N PROMPT...`` prints JSON: each
prompt's token ids, the greedy continuations (no EOS stop) of the base model and of PEFT's
base + adapter, and the smallest top-1/top-2 logit gap met on the way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def megatron_lora(base: Path, out: Path, *, r: int, alpha: float, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((base / "config.json").read_text())
    h, ffn = cfg["hidden_size"], cfg["intermediate_size"]
    heads, groups = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // heads
    shapes = {  # module: (fan in, fan out) of the megatron weight it adapts
        "self_attention.linear_qkv": (h, (heads + 2 * groups) * hd),
        "self_attention.linear_proj": (heads * hd, h),
        "mlp.linear_fc1": (h, 2 * ffn),
        "mlp.linear_fc2": (ffn, h),
    }
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for module, (fan_in, fan_out) in shapes.items():
            p = f"decoder.layers.{layer}.{module}"
            tensors[f"{p}.lora_A.weight"] = torch.randn(r, fan_in, generator=g) * 0.1
            tensors[f"{p}.lora_B.weight"] = torch.randn(fan_out, r, generator=g) * 0.1
    out.mkdir(parents=True)
    save_file(tensors, str(out / "adapter.safetensors"))
    (out / "lora_config.json").write_text(json.dumps({"r": r, "alpha": alpha}) + "\n")


def greedy(base: Path, adapter: Path, prompts: list[str], new_tokens: int) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]

    def run(model) -> tuple[list[list[int]], float]:
        outs, margin = [], float("inf")
        for prompt in ids:
            seq = list(prompt)
            for _ in range(new_tokens):  # no KV cache: a few dozen tiny forwards
                with torch.no_grad():
                    logits = model(torch.tensor([seq])).logits[0, -1].float()
                top = torch.topk(logits, 2).values
                margin = min(margin, (top[0] - top[1]).item())
                seq.append(int(logits.argmax()))
            outs.append(seq[len(prompt) :])
        return outs, margin

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    base_out, base_margin = run(model)
    peft_model = PeftModel.from_pretrained(model, str(adapter)).eval()
    lora_out, lora_margin = run(peft_model)
    return {
        "prompt_ids": ids,
        "base": base_out,
        "lora": lora_out,
        "base_margin": base_margin,
        "lora_margin": lora_margin,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("megatron-lora")
    m.add_argument("base", type=Path)
    m.add_argument("out", type=Path)
    m.add_argument("--r", type=int, required=True)
    m.add_argument("--alpha", type=float, required=True)
    m.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("greedy")
    g.add_argument("base", type=Path)
    g.add_argument("adapter", type=Path)
    g.add_argument("prompts", nargs="+")
    g.add_argument("--new-tokens", type=int, required=True)
    args = ap.parse_args()
    if args.cmd == "megatron-lora":
        megatron_lora(args.base, args.out, r=args.r, alpha=args.alpha, seed=args.seed)
    else:
        print(json.dumps(greedy(args.base, args.adapter, args.prompts, args.new_tokens)))


if __name__ == "__main__":
    main()
