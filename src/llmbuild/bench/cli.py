"""`llmbuild bench ...`: benchmark an OpenAI-compatible service (static and dynamic).

Both verbs write one CSV row per cell (config columns, vLLM-named metrics, validity columns;
every column is defined in ``llmbuild.bench.metrics``) and one JSON line per request. Both
hold the service's benchmark lock while they measure (``llmbuild.bench.lock``): benchmarks of
one service run one after the other, never over each other.

Two gates decide whether the outputs are written (``llmbuild.bench.gate``): the service gate
(failed requests over ``--max-failed-fraction``, or a service process that is gone, fail the
command whatever the mode) and the validity gate (every row ``valid`` under
``--min-rate-fraction``, ``--max-lag-ms`` and the failed fraction; ``--gate-mode warn`` writes
invalid rows marked ``valid=False`` instead of failing). A failed gate writes no CSV, records
or verdict; they go to ``--keep-on-failure DIR`` when given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from llmbuild import provenance
from llmbuild.errors import UserError


def _fmt(x: float) -> str:
    return "nan" if x != x else f"{x:.1f}"


def _workload(args: argparse.Namespace) -> tuple[Any, Any]:
    from llmbuild.bench.workload import ModelMix, Workload

    workload = Workload(api=args.api, output_mode=args.output_mode, speculative=args.speculative)
    mix = ModelMix.parse(args.lora_mix) if args.lora_mix else None
    return workload, mix


def _checks(args: argparse.Namespace) -> Any:
    from llmbuild.bench.metrics import SLO

    if args.request_timeout <= 0:
        raise UserError("must be > 0 seconds", field="--request-timeout")
    return SLO(ttft_ms=args.slo_ttft_ms, tpot_ms=args.slo_tpot_ms, e2el_ms=args.slo_e2el_ms)


def _gate_checks(args: argparse.Namespace) -> tuple[Any, Any]:
    """The gate flags, checked before anything runs: (limits, keep-on-failure dir)."""
    from llmbuild.bench import gate
    from llmbuild.bench.metrics import Limits

    limits = Limits(
        min_rate_fraction=args.min_rate_fraction,
        max_lag_ms=args.max_lag_ms,
        max_failed_fraction=args.max_failed_fraction,
    )
    return limits, gate.check_keep_dir(args.keep_on_failure)


def _connect(args: argparse.Namespace) -> tuple[Any, Any]:
    """The endpoint: from a service's endpoint file (waiting until it is ready) or a base URL;
    with the endpoint file's contents (None for a base URL)."""
    from llmbuild.bench.client import Endpoint, api_key_from_env
    from llmbuild.serve.endpoint import wait_ready

    api_key = api_key_from_env(args.api_key_env)
    if args.base_url:
        if not args.model:
            raise UserError("--base-url needs --model (the served model name)", field="--model")
        return Endpoint(base_url=args.base_url, model=args.model, api_key=api_key), None
    print(f"waiting for {args.endpoint} (up to {args.ready_timeout:g} s)", flush=True)
    info = wait_ready(args.endpoint, args.ready_timeout)
    endpoint = Endpoint(base_url=info.base_url, model=args.model or info.model, api_key=api_key)
    return endpoint, info


def _exclusive(endpoint: Any) -> Any:
    from llmbuild.bench.lock import service_lock

    def waiting(path: Path) -> None:
        print(
            f"another benchmark of {endpoint.base_url} is running; waiting for it ({path})",
            flush=True,
        )

    return service_lock(endpoint.base_url, waiting)


def _cell_line(prefix: str, row: dict) -> str:
    return (
        f"{prefix}: {row['successes']}/{row['successes'] + row['failures']} ok, "
        f"p90 TTFT {_fmt(row['p90_ttft_ms'])} ms, p90 TPOT {_fmt(row['p90_tpot_ms'])} ms, "
        f"output {_fmt(row['output_throughput'])} tok/s, "
        f"sent at {_fmt(row['achieved_request_rate'])} req/s, "
        f"p99 client lag {row['p99_sched_lag_ms']:.2f} ms"
        + (f", first error: {row['first_error'][:200]}" if row["failures"] else "")
    )


def _finish(args, command, rows, staged, inputs, started, endpoint, info) -> int:
    """The gates, then the outputs: published only when both gates pass (or warn)."""
    from llmbuild.bench import gate
    from llmbuild.bench.metrics import mark_validity
    from llmbuild.bench.static import write_csv
    from llmbuild.gates import verdict as V

    limits, keep = _gate_checks(args)
    out_csv, out_rec = Path(args.output), Path(args.records)
    failures = sum(r["failures"] for r in rows)
    total = sum(r["successes"] + r["failures"] for r in rows)
    first_error = next((r["first_error"] for r in rows if r["failures"]), "")
    mark_validity(rows, limits)
    with staged.open(out_csv) as fh:
        write_csv(rows, fh)
    kind = command.split()[-1]
    stem = Path(out_csv).stem

    service = gate.service_after_run(args.endpoint, info, endpoint.model)
    sv = gate.service_verdict(service, failures, total, limits.max_failed_fraction)
    print(sv.line(), flush=True)
    if sv.failed:
        kept = staged.keep(keep)
        if keep is not None:
            kept.append(gate.keep_verdict(keep, f"{stem}.verdict.json", sv))
        raise UserError(gate.failure_line(sv, service, first_error, kept, command))

    bv = gate.bench_verdict(
        rows,
        subject=f"{endpoint.model} {kind}",
        mode=args.gate_mode,
        min_rate_fraction=limits.min_rate_fraction,
        max_lag_ms=limits.max_lag_ms,
        max_failed_fraction=limits.max_failed_fraction,
    )
    print(bv.line(), flush=True)
    if bv.failed:
        kept = staged.keep(keep)
        if keep is not None:
            kept.append(gate.keep_verdict(keep, f"{stem}.verdict.json", bv))
        raise UserError(gate.invalid_line(bv, kept))

    staged.publish()
    for path in (out_csv, out_rec):
        provenance.write(
            path,
            command=command,
            args=vars(args),
            inputs=inputs,
            started=started,
            extra={"model": endpoint.model, "base_url": endpoint.base_url},
        )
    if args.verdict:
        V.write(
            args.verdict,
            bv,
            command=command,
            args=vars(args),
            inputs=[out_csv, out_rec],
            started=started,
        )
    invalid = sum(not r["valid"] for r in rows)
    print(
        f"wrote {len(rows)} rows to {out_csv} and {total} request records to {out_rec}; "
        f"{failures} of {total} requests failed"
        + (f"; {invalid} row(s) marked invalid (--gate-mode warn)" if invalid else "")
    )
    return 0


def _tokenizer_input(path: str) -> str:
    # the tokenizer file only: digesting a whole model directory would read every weight
    tok = Path(path)
    return str(tok if tok.is_file() else tok / "tokenizer.json")


def _static(args: argparse.Namespace) -> int:
    from llmbuild.bench import gate
    from llmbuild.bench.prompts import PromptMaker, load_tokenizer
    from llmbuild.bench.static import StaticConfig, parse_int_list, run_static
    from llmbuild.progress import RateLog

    started = time.time()
    workload, mix = _workload(args)
    cfg = StaticConfig(
        concurrency=parse_int_list(args.concurrency, "--concurrency"),
        input_lens=parse_int_list(args.input_len, "--input-len"),
        output_lens=parse_int_list(args.output_len, "--output-len"),
        epochs=args.epochs,
        seed=args.seed,
        prefix_len=args.prefix_len,
        workload=workload,
        model_mix=mix,
    )
    slo = _checks(args)
    _gate_checks(args)
    maker = PromptMaker(load_tokenizer(args.tokenizer))
    endpoint, info = _connect(args)
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
        prefix = f"c={row['concurrency']} in={row['input_len']} out={row['output_len']}"
        print(_cell_line(prefix, row), flush=True)

    inputs = [p for p in (args.endpoint, _tokenizer_input(args.tokenizer)) if p]
    with gate.Staged() as staged:
        with _exclusive(endpoint), staged.open(args.records) as frec:
            rows = run_static(
                endpoint, cfg, maker, slo, args.request_timeout, frec, on_request, on_cell
            )
        return _finish(args, "bench static", rows, staged, inputs, started, endpoint, info)


def _dynamic(args: argparse.Namespace) -> int:
    from llmbuild.bench import gate
    from llmbuild.bench.datasets import load_dataset
    from llmbuild.bench.dynamic import DynamicConfig, parse_rates, run_dynamic
    from llmbuild.bench.prompts import load_tokenizer
    from llmbuild.bench.static import parse_int_list
    from llmbuild.progress import RateLog

    started = time.time()
    workload, mix = _workload(args)
    cfg = DynamicConfig(
        rates=parse_rates(args.request_rate),
        num_prompts=parse_int_list(" ".join(args.num_prompts), "--num-prompts"),
        seed=args.seed,
        max_concurrency=args.max_concurrency,
        workload=workload,
        model_mix=mix,
    )
    slo = _checks(args)
    _gate_checks(args)
    entries, report = load_dataset(
        args.dataset,
        args.dataset_type,
        load_tokenizer(args.tokenizer),
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        output_len=args.output_len,
    )
    print(f"dataset {args.dataset} ({args.dataset_type}): {report}", flush=True)
    endpoint, info = _connect(args)
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

    def on_cell(row: dict) -> None:
        print(_cell_line(f"rate {row['request_rate']:g} req/s", row), flush=True)

    inputs = [p for p in (args.endpoint, _tokenizer_input(args.tokenizer), args.dataset) if p]
    with gate.Staged() as staged:
        with _exclusive(endpoint), staged.open(args.records) as frec:
            rows = run_dynamic(
                endpoint,
                cfg,
                entries,
                Path(args.dataset).name,
                slo,
                args.request_timeout,
                frec,
                on_request,
                on_cell,
            )
        return _finish(args, "bench dynamic", rows, staged, inputs, started, endpoint, info)


def _common(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", help="service endpoint file (JSON), waited on until ready")
    where.add_argument("--base-url", help="or the service's base URL, e.g. http://host:8000/v1")
    p.add_argument("--tokenizer", required=True, help="served model dir with tokenizer.json")
    p.add_argument("--output", required=True, help="CSV, one row per cell")
    p.add_argument("--records", required=True, help="JSONL, one line per request")
    p.add_argument("--model", default=None, help="served model name (default: endpoint's)")
    p.add_argument(
        "--api",
        choices=("completions", "chat"),
        default="completions",
        help="/v1/completions (raw prompt) or /v1/chat/completions (server's chat template)",
    )
    p.add_argument(
        "--output-mode",
        choices=("forced", "natural"),
        default="forced",
        help="forced: ignore_eos + min_tokens, exactly the output length; natural: a cap only",
    )
    p.add_argument(
        "--speculative",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="speculative decoding: count output tokens from the stream's usage (required)",
    )
    p.add_argument(
        "--lora-mix",
        default=None,
        help="model names with weights, e.g. lora1=3,lora2=1,base=1 (multi-LoRA traffic)",
    )
    p.add_argument("--seed", type=int, default=0)
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
    gates = p.add_argument_group("gates (see llmbuild.bench.gate; columns in bench.metrics)")
    gates.add_argument(
        "--max-failed-fraction",
        type=float,
        default=0.0,
        help="failed requests allowed, as a fraction of those sent (in all, and per row); "
        "more, or a service that died, fails the command and writes nothing (default 0)",
    )
    gates.add_argument(
        "--min-rate-fraction",
        type=float,
        default=0.95,
        help="a dynamic row is invalid when its achieved request rate is below this fraction "
        "of the target (default 0.95)",
    )
    gates.add_argument(
        "--max-lag-ms",
        type=float,
        default=100.0,
        help="a row is invalid when its client scheduling lag p99 exceeds this (default 100)",
    )
    gates.add_argument(
        "--gate-mode",
        choices=("fail", "warn"),
        default="fail",
        help="invalid rows: fail (no outputs) or warn (write them with valid=False and a warn "
        "verdict); a dead service fails either way (default fail)",
    )
    gates.add_argument(
        "--verdict", default=None, help="bench_validity verdict JSON, written on success"
    )
    gates.add_argument(
        "--keep-on-failure",
        default=None,
        metavar="DIR",
        help="on failure, move the records and the would-be CSV here for diagnosis",
    )


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("static", help="concurrency x (input, output) lengths x epochs -> CSV")
    p.add_argument("--concurrency", required=True, help="comma-separated, e.g. 1,2,4")
    p.add_argument("--input-len", required=True, help="prompt tokens, comma-separated")
    p.add_argument(
        "--output-len",
        required=True,
        help="output tokens, comma-separated, one per --input-len value",
    )
    p.add_argument("--epochs", type=int, default=5, help="rounds of <concurrency> requests")
    p.add_argument(
        "--prefix-len",
        type=int,
        default=0,
        help="tokens of a prefix common to all prompts (prefix caching)",
    )
    _common(p)
    p.set_defaults(func=_static)

    p = verbs.add_parser(
        "dynamic", help="request rates (Poisson arrivals) x num-prompts over a dataset -> CSV"
    )
    p.add_argument(
        "--request-rate", required=True, nargs="+", help="req/s, e.g. 0.5 1 2 or 1,2,inf"
    )
    p.add_argument(
        "--num-prompts", required=True, nargs="+", help="requests per rate (or one for all)"
    )
    p.add_argument("--dataset", required=True, help="dataset file")
    p.add_argument(
        "--dataset-type",
        choices=("custom", "sharegpt", "alpaca", "human-eval"),
        default="custom",
        help="custom: `llmbuild dataset generate` JSONL",
    )
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="drop longer prompts")
    p.add_argument(
        "--max-tokens", type=int, default=None, help="drop entries whose prompt + output exceed"
    )
    p.add_argument(
        "--output-len", type=int, default=None, help="one output length for every request"
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="at most this many requests in flight (default: no limit, open loop)",
    )
    _common(p)
    p.set_defaults(func=_dynamic)
