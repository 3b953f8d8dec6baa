"""`llmbuild bench dynamic`: request rates (Poisson arrivals) x num-prompts over a dataset."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from llmbuild.bench import cli_common as common
from llmbuild.cliargs import positive_float_list, positive_int_list
from llmbuild.schema import default


def _dynamic(args: argparse.Namespace) -> int:
    from llmbuild.bench.dynamic import DynamicConfig, run_dynamic
    from llmbuild.progress import RateLog
    from llmbuild.serve.counters import CellCounters

    started = time.time()
    cfg = DynamicConfig(
        rates=args.request_rate,
        num_prompts=args.num_prompts,
        seed=args.seed,
        max_concurrency=args.max_concurrency,
        **common.request_mix(args),
    )
    slo = common.checks(args)
    entries, report = common.load_filtered(args, args.data, "--data")
    print(f"dataset {args.data} ({args.dataset_type}): {report}", flush=True)
    endpoint, info = common.connect(args)
    print(
        f"benchmarking {endpoint.base_url} model {endpoint.model}: rates {list(cfg.rates)} "
        f"req/s, {list(cfg.num_prompts)} requests",
        flush=True,
    )
    logs: dict[float, RateLog] = {}

    def on_request(rate: float, n: int) -> None:
        if rate not in logs:
            total = cfg.num_prompts[cfg.rates.index(rate)]
            logs[rate] = RateLog(f"rate {rate:g}", total=total, unit="requests", stream=sys.stdout)
        logs[rate].update(n)

    counters = CellCounters(endpoint.base_url)

    def on_cell(row: dict) -> None:
        counters.add(row)
        print(common.cell_line(f"rate {row['request_rate']:g} req/s", row), flush=True)

    def run(frec) -> list[dict]:
        counters.start()
        name = Path(args.data).name
        return run_dynamic(
            endpoint, cfg, entries, name, slo, args.request_timeout, frec, on_request, on_cell
        )

    inputs = [p for p in (args.endpoint, common.tokenizer_input(args.tokenizer), args.data) if p]
    return common.measure(args, "bench dynamic", (endpoint, info), inputs, started, run)


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "dynamic", help="request rates (Poisson arrivals) x num-prompts over a dataset -> CSV"
    )
    text = "req/s, comma-separated, e.g. 0.5,1,inf"
    common.knob(p, "bench.dynamic.request_rate", positive_float_list, text)
    text = "requests per rate, comma-separated (or one for all)"
    common.knob(p, "bench.dynamic.num_prompts", positive_int_list, text)
    p.add_argument("--data", required=True, help="the dataset file")
    common.add_filters(p, type_required=False)
    text = "at most this many requests in flight; None: no limit, open loop"
    common.knob(p, "bench.dynamic.max_concurrency", int, text)
    workload = {k: default(f"bench.dynamic.{k}") for k in common.WORKLOAD_KEYS}
    common.add_common(p, seed=default("bench.dynamic.seed"), workload=workload)
    p.set_defaults(func=_dynamic)
