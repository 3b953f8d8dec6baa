"""`llmbuild bench generate-dataset` and `bench filter-dataset`: the dynamic benchmark's
datasets, generated or filtered from public ones (defaults: the schema's bench.dataset.*)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llmbuild import provenance
from llmbuild.atomic import atomic_file
from llmbuild.bench import cli_common as common
from llmbuild.schema import default


def _write(args: argparse.Namespace, command: str, entries: list, inputs: list, started: float):
    from llmbuild.bench.datasets import write_jsonl

    out = Path(args.output)
    with atomic_file(out) as fh:
        write_jsonl(entries, fh)
    provenance.write(out, command=command, args=vars(args), inputs=inputs, started=started)
    return out


def _generate(args: argparse.Namespace) -> int:
    from llmbuild.bench.datasets import LengthDist, generate
    from llmbuild.bench.prompts import PromptMaker, load_tokenizer

    started = time.time()
    ins = LengthDist(args.min_input, args.max_input, args.avg_input, args.std_input, "input")
    outs = LengthDist(args.min_output, args.max_output, args.avg_output, args.std_output, "output")
    maker = PromptMaker(load_tokenizer(args.tokenizer))
    print(f"generating {args.num_requests} requests", flush=True)
    t = time.monotonic()
    entries = generate(maker, args.num_requests, ins, outs, args.seed)
    tok = common.tokenizer_input(args.tokenizer)
    out = _write(args, "bench generate-dataset", entries, [tok], started)
    n = len(entries)
    mi = sum(e.prompt_len for e in entries) / n
    mo = sum(e.output_len for e in entries) / n
    print(
        f"wrote {n} requests to {out} in {time.monotonic() - t:.1f} s: mean input {mi:.1f} "
        f"tokens, mean output {mo:.1f} tokens"
    )
    return 0


def _filter(args: argparse.Namespace) -> int:
    started = time.time()
    entries, report = common.load_filtered(args, args.input, "--input")
    tok = common.tokenizer_input(args.tokenizer)
    out = _write(args, "bench filter-dataset", entries, [args.input, tok], started)
    print(f"{args.input}: {report}; wrote {out}")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "generate-dataset",
        help="prompts of clipped-normal token lengths (the seeds' generate_dataset)",
    )
    p.add_argument("--output", required=True, help="JSONL to write")
    p.add_argument("--tokenizer", required=True, help="served model dir with tokenizer.json")
    p.add_argument("--num-requests", type=int, default=default("bench.dataset.num_requests"))
    for which in ("input", "output"):
        d = {
            stat: default(f"bench.dataset.{stat}_{which}") for stat in ("min", "max", "avg", "std")
        }
        p.add_argument(
            f"--min-{which}", type=int, default=d["min"], help=f"{which} tokens, at least"
        )
        p.add_argument(
            f"--max-{which}", type=int, default=d["max"], help=f"{which} tokens, at most"
        )
        p.add_argument(
            f"--avg-{which}", f"--mean-{which}", type=float, default=d["avg"], help="normal's mean"
        )
        p.add_argument(f"--std-{which}", type=float, default=d["std"], help="normal's std")
    p.add_argument("--seed", type=int, default=default("bench.dataset.seed"))
    p.set_defaults(func=_generate)

    p = verbs.add_parser(
        "filter-dataset",
        help="ShareGPT / Alpaca / human-eval -> the benchmark's JSONL, length-filtered",
    )
    p.add_argument("--input", required=True, help="the source file")
    p.add_argument("--tokenizer", required=True, help="served model dir with tokenizer.json")
    p.add_argument("--output", required=True, help="JSONL to write")
    common.add_filters(p, type_required=True)
    p.set_defaults(func=_filter)
