"""`llmbuild bench static`: concurrency x (input, output) lengths x epochs -> CSV."""

from __future__ import annotations

import argparse
import sys
import time

from llmbuild.bench import cli_common as common
from llmbuild.cliargs import positive_int_list
from llmbuild.schema import default


def _static(args: argparse.Namespace) -> int:
    from llmbuild.bench.prompts import PromptMaker, load_tokenizer
    from llmbuild.bench.static import StaticConfig, run_static
    from llmbuild.progress import RateLog
    from llmbuild.serve.counters import CellCounters

    started = time.time()
    cfg = StaticConfig(
        concurrency=args.concurrency,
        input_lens=args.input_len,
        output_lens=args.output_len,
        epochs=args.epochs,
        seed=args.seed,
        prefix_len=args.prefix_len,
        **common.request_mix(args),
    )
    slo = common.checks(args)
    maker = PromptMaker(load_tokenizer(args.tokenizer))
    endpoint, info = common.connect(args)
    print(
        f"benchmarking {endpoint.base_url} model {endpoint.model}: {len(cfg.cells())} cells",
        flush=True,
    )
    logs: dict[object, RateLog] = {}

    def on_request(cell, n: int) -> None:
        if cell not in logs:
            logs[cell] = RateLog(
                f"c={cell.concurrency} in={cell.input_len} out={cell.output_len}",
                total=cfg.epochs * cell.concurrency,
                unit="requests",
                stream=sys.stdout,
            )
        logs[cell].update(n)

    counters = CellCounters(endpoint.base_url)

    def on_cell(row: dict) -> None:
        counters.add(row)
        prefix = f"c={row['concurrency']} in={row['input_len']} out={row['output_len']}"
        print(common.cell_line(prefix, row), flush=True)

    def run(frec) -> list[dict]:
        counters.start()
        return run_static(
            endpoint, cfg, maker, slo, args.request_timeout, frec, on_request, on_cell
        )

    inputs = [p for p in (args.endpoint, common.tokenizer_input(args.tokenizer)) if p]
    return common.measure(args, "bench static", (endpoint, info), inputs, started, run)


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("static", help="concurrency x (input, output) lengths x epochs -> CSV")
    for key, kind, text in (
        ("concurrency", positive_int_list, "requests in flight, comma-separated, e.g. 1,2,4"),
        ("input_len", positive_int_list, "prompt tokens, comma-separated"),
        ("output_len", positive_int_list, "output tokens, comma-separated, one per --input-len"),
        ("epochs", int, "rounds of <concurrency> requests"),
        ("prefix_len", int, "tokens of a prefix common to all prompts (prefix caching)"),
    ):
        common.knob(p, f"bench.static.{key}", kind, text)
    common.add_common(p, seed=default("bench.static.seed"), workload=common.WORKLOAD_DEFAULTS)
    p.set_defaults(func=_static)
