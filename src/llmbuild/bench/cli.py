"""`llmbuild bench ...`: benchmark an OpenAI-compatible service (static for now)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from llmbuild import provenance
from llmbuild.atomic import atomic_file
from llmbuild.errors import UserError


def _fmt(x: float) -> str:
    return "nan" if x != x else f"{x:.1f}"


def _static(args: argparse.Namespace) -> int:
    from llmbuild.bench.client import Endpoint, api_key_from_env
    from llmbuild.bench.metrics import SLO
    from llmbuild.bench.prompts import PromptMaker, load_tokenizer
    from llmbuild.bench.static import StaticConfig, parse_int_list, run_static, write_csv
    from llmbuild.progress import RateLog
    from llmbuild.serve.endpoint import wait_ready

    started = time.time()
    cfg = StaticConfig(
        concurrency=parse_int_list(args.concurrency, "--concurrency"),
        input_lens=parse_int_list(args.input_len, "--input-len"),
        output_lens=parse_int_list(args.output_len, "--output-len"),
        epochs=args.epochs,
        seed=args.seed,
        prefix_len=args.prefix_len,
    )
    slo = SLO(ttft_ms=args.slo_ttft_ms, tpot_ms=args.slo_tpot_ms, e2el_ms=args.slo_e2el_ms)
    if args.request_timeout <= 0:
        raise UserError("must be > 0 seconds", field="--request-timeout")
    api_key = api_key_from_env(args.api_key_env)
    maker = PromptMaker(load_tokenizer(args.tokenizer))
    print(f"waiting for {args.endpoint} (up to {args.ready_timeout:g} s)", flush=True)
    info = wait_ready(args.endpoint, args.ready_timeout)
    endpoint = Endpoint(base_url=info.base_url, model=args.model or info.model, api_key=api_key)
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

    def on_cell(row: dict) -> None:
        print(
            f"c={row['concurrency']} in={row['input_len']} out={row['output_len']}: "
            f"{row['successes']}/{row['num_requests']} ok, "
            f"p90 TTFT {_fmt(row['p90_ttft_ms'])} ms, p90 TPOT {_fmt(row['p90_tpot_ms'])} ms, "
            f"output {_fmt(row['output_throughput'])} tok/s"
            + (f", first error: {row['first_error'][:200]}" if row["failures"] else ""),
            flush=True,
        )

    out_csv, out_rec = Path(args.output), Path(args.records)
    with atomic_file(out_csv) as fcsv, atomic_file(out_rec) as frec:
        rows = run_static(
            endpoint, cfg, maker, slo, args.request_timeout, frec, on_request, on_cell
        )
        write_csv(rows, fcsv)
    # the tokenizer file only: digesting a whole model directory would read every weight
    tok = Path(args.tokenizer)
    inputs = [args.endpoint, str(tok if tok.is_file() else tok / "tokenizer.json")]
    for path in (out_csv, out_rec):
        provenance.write(
            path,
            command="bench static",
            args=vars(args),
            inputs=inputs,
            started=started,
            extra={"model": endpoint.model, "base_url": endpoint.base_url},
        )
    failures = sum(r["failures"] for r in rows)
    total = sum(r["num_requests"] for r in rows)
    print(
        f"wrote {len(rows)} rows to {out_csv} and {total} request records to {out_rec}; "
        f"{failures} of {total} requests failed"
    )
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("static", help="concurrency x (input, output) lengths x epochs -> CSV")
    p.add_argument("--endpoint", required=True, help="service endpoint file (JSON)")
    p.add_argument("--tokenizer", required=True, help="served model dir with tokenizer.json")
    p.add_argument("--concurrency", required=True, help="comma-separated, e.g. 1,2,4")
    p.add_argument("--input-len", required=True, help="prompt tokens, comma-separated")
    p.add_argument(
        "--output-len",
        required=True,
        help="output tokens, comma-separated, one per --input-len value",
    )
    p.add_argument("--epochs", type=int, default=5, help="rounds of <concurrency> requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--prefix-len",
        type=int,
        default=0,
        help="tokens of a prefix common to all prompts (prefix caching)",
    )
    p.add_argument("--output", required=True, help="CSV, one row per cell")
    p.add_argument("--records", required=True, help="JSONL, one line per request")
    p.add_argument("--model", default=None, help="served model name (default: endpoint's)")
    p.add_argument(
        "--api-key-env", default=None, help="name of the environment variable holding the API key"
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the service to be ready",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds before one request counts as failed",
    )
    p.add_argument("--slo-ttft-ms", type=float, default=None)
    p.add_argument("--slo-tpot-ms", type=float, default=None)
    p.add_argument("--slo-e2el-ms", type=float, default=None)
    p.set_defaults(func=_static)
