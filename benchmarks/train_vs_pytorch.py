"""Training throughput: `llmbuild train run` (megatron-core) against a plain PyTorch loop over
the same Hugging Face model and batch shape, on this machine's CPU, side by side.

Run it in the train environment (it has megatron-core, transformers and llmbuild):

    .envs/train/bin/python benchmarks/train_vs_pytorch.py [--runs 3] [--steps 30]

Both sides train the embedded default's model (the tiny Llama `llmbuild model tiny` makes:
4 layers, hidden 128, vocabulary 512, float32) on the default pretraining batch (micro batch
16 x 128 tokens, one micro-batch per step), with Adam(W) and gradient clipping at 1.0, with
the same thread count. megatron-core's tokens/s per step come from its training log; the
plain loop (transformers' LlamaForCausalLM, torch.optim.AdamW, the same learning rate and
betas) is timed step by step here. The first steps of each run are warm-up and left out; the
figure of a run is its median step; the printed figure is the median over runs, which
alternate between the two sides so both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP = 5


def sh(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def llmbuild(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmbuild", *args]


def prepare(root: Path, docs: int) -> None:
    """The default's base model, its Megatron checkpoint and pretraining shards."""
    sh(
        *llmbuild(
            "data", "synth-corpus", "--output", str(root / "corpus.jsonl"), "--num-docs", str(docs)
        )
    )
    sh(
        *llmbuild(
            "model", "tiny", "--input", str(root / "corpus.jsonl"), "--output", str(root / "hf")
        )
    )
    sh(*llmbuild("convert", "hf2mg", "--input", str(root / "hf"), "--output", str(root / "mg")))
    sh(
        *llmbuild("data", "tokenize", "--kind", "pretrain", "--input", str(root / "corpus.jsonl")),
        *("--tokenizer", str(root / "hf"), "--output", str(root / "pt"), "--seq-length", "128"),
    )  # fmt: skip


def mcore_run(root: Path, n: int, steps: int, mbs: int, seq: int, threads: int) -> float:
    out = root / f"mcore{n}"
    cmd = llmbuild(
        "train", "run", "--mode", "pretrain", "--input", str(root / "mg"), "--data",
        str(root / "pt"), "--output", str(out), "--train-log", str(out) + ".jsonl",
        "--train-iters", str(steps), "--lr", "0.002", "--min-lr", "0.0002", "--warmup-iters",
        "2", "--micro-batch-size", str(mbs), "--global-batch-size", str(mbs), "--seq-length",
        str(seq), "--threads", str(threads), "--save-interval", "0",
    )  # fmt: skip
    sh(*cmd)
    log = [json.loads(x) for x in Path(str(out) + ".jsonl").read_text().splitlines()]
    return statistics.median(r["tokens_per_s_per_device"] for r in log[WARMUP:])


def torch_run(root: Path, steps: int, mbs: int, seq: int, threads: int) -> float:
    """The plain loop, in a fresh process like the other side."""
    code = f"""
import statistics, time, torch
from transformers import AutoModelForCausalLM
torch.set_num_threads({threads})
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained({str(root / "hf")!r}, dtype=torch.float32)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=0.002, betas=(0.9, 0.95), eps=1e-8,
                        weight_decay=0.01)
vocab = model.config.vocab_size
rates = []
for step in range({steps}):
    batch = torch.randint(0, vocab, ({mbs}, {seq} + 1))
    t0 = time.perf_counter()
    out = model(input_ids=batch[:, :-1], labels=batch[:, :-1])
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    rates.append({mbs} * {seq} / (time.perf_counter() - t0))
print(statistics.median(rates[{WARMUP}:]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--micro-batch-size", type=int, default=16)
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        root = Path(tmp)
        t0 = time.time()
        prepare(root, docs=600)
        print(f"prepared the default model and shards in {time.time() - t0:.0f} s", flush=True)
        shape = (args.steps, args.micro_batch_size, args.seq_length, args.threads)
        mc, pt = [], []
        for n in range(args.runs):
            mc.append(mcore_run(root, n, *shape))
            pt.append(torch_run(root, *shape))
            print(f"run {n + 1}: megatron-core {mc[-1]:,.0f} tok/s, PyTorch {pt[-1]:,.0f} tok/s",
                  flush=True)  # fmt: skip
    m, t = statistics.median(mc), statistics.median(pt)
    print(f"\n{'':26}{'tokens/s per device (median of runs)':>38}")
    print(f"{'megatron-core (llmbuild)':26}{m:>38,.0f}")
    print(f"{'plain PyTorch + HF model':26}{t:>38,.0f}")
    print(f"ratio megatron-core / PyTorch: {m / t:.2f} (target >= 0.80)")
    print(f"batch {args.micro_batch_size} x {args.seq_length} tokens, {args.threads} threads, "
          f"{args.steps} steps per run ({WARMUP} warm-up left out), {args.runs} runs")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
