"""`llmbuild dataset ...`: benchmark datasets (generated, or filtered from public ones)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llmbuild import provenance
from llmbuild.atomic import atomic_file


def _tok_input(path: str) -> str:
    tok = Path(path)
    return str(tok if tok.is_file() else tok / "tokenizer.json")


def _generate(args: argparse.Namespace) -> int:
    from llmbuild.bench.datasets import LengthDist, generate, write_jsonl
    from llmbuild.bench.prompts import PromptMaker, load_tokenizer

    started = time.time()
    ins = LengthDist(args.min_input, args.max_input, args.avg_input, args.std_input, "input")
    outs = LengthDist(args.min_output, args.max_output, args.avg_output, args.std_output, "output")
    maker = PromptMaker(load_tokenizer(args.tokenizer))
    print(f"generating {args.num_requests} requests", flush=True)
    t = time.monotonic()
    entries = generate(maker, args.num_requests, ins, outs, args.seed)
    out = Path(args.output)
    with atomic_file(out) as fh:
        write_jsonl(entries, fh)
    provenance.write(
        out,
        command="dataset generate",
        args=vars(args),
        inputs=[_tok_input(args.tokenizer)],
        started=started,
    )
    n = len(entries)
    mi = sum(e.prompt_len for e in entries) / n
    mo = sum(e.output_len for e in entries) / n
    print(
        f"wrote {n} requests to {out} in {time.monotonic() - t:.1f} s: mean input {mi:.1f} "
        f"tokens, mean output {mo:.1f} tokens"
    )
    return 0


def _filter(args: argparse.Namespace) -> int:
    from llmbuild.bench.datasets import load_dataset, write_jsonl
    from llmbuild.bench.prompts import load_tokenizer

    started = time.time()
    entries, report = load_dataset(
        args.dataset,
        args.dataset_type,
        load_tokenizer(args.tokenizer),
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        output_len=args.output_len,
    )
    out = Path(args.output)
    with atomic_file(out) as fh:
        write_jsonl(entries, fh)
    provenance.write(
        out,
        command="dataset filter",
        args=vars(args),
        inputs=[args.dataset, _tok_input(args.tokenizer)],
        started=started,
    )
    print(f"{args.dataset}: {report}; wrote {out}")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "generate", help="prompts of clipped-normal token lengths (the seeds' generate_dataset)"
    )
    p.add_argument("--output", "--dataset", dest="output", required=True, help="JSONL to write")
    p.add_argument("--tokenizer", required=True, help="served model dir with tokenizer.json")
    p.add_argument("--num-requests", type=int, required=True)
    for which, (lo, hi, avg, std) in (("input", (8, 64, 32, 8)), ("output", (4, 32, 16, 4))):
        p.add_argument(f"--min-{which}", type=int, default=lo, help=f"{which} tokens, at least")
        p.add_argument(f"--max-{which}", type=int, default=hi, help=f"{which} tokens, at most")
        p.add_argument(
            f"--avg-{which}", f"--mean-{which}", type=float, default=avg, help="normal's mean"
        )
        p.add_argument(f"--std-{which}", type=float, default=std, help="normal's std")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_generate)

    p = verbs.add_parser(
        "filter", help="ShareGPT / Alpaca / human-eval -> the benchmark's JSONL, length-filtered"
    )
    p.add_argument("--dataset", required=True, help="the source file")
    p.add_argument(
        "--dataset-type", required=True, choices=("custom", "sharegpt", "alpaca", "human-eval")
    )
    p.add_argument("--tokenizer", required=True, help="served model dir with tokenizer.json")
    p.add_argument("--output", required=True, help="JSONL to write")
    p.add_argument("--max-prompt-tokens", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None, help="prompt + output, at most")
    p.add_argument("--output-len", type=int, default=None, help="one output length for all")
    p.set_defaults(func=_filter)
