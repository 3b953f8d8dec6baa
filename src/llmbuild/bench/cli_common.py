"""What the `llmbuild bench` verbs share: their common flags, the dataset filters, connecting
to the service, and the end of every measurement (the gates, then the outputs).

Flags that a config key sets take their default from the schema (``llmbuild.schema``); the
rest have literal defaults. Argparse-level imports only: the HTTP client, numpy and the
tokenizer load inside the functions that use them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from llmbuild import provenance
from llmbuild.errors import UserError
from llmbuild.schema import default, describe, node

#: the request mix of the static benchmark, which no config key sets (the dynamic one's
#: defaults are the schema's bench.dynamic.*)
WORKLOAD_DEFAULTS = {"api": "completions", "output_mode": "forced", "speculative": False}
WORKLOAD_KEYS = (*WORKLOAD_DEFAULTS, "lora_mix")
#: the dataset types a file may have: the schema's bench.dataset.type values
DATASET_TYPES = tuple(node("bench.dataset.type")["enum"])


def flag(key: str) -> str:
    """The flag a config key sets: ``max_lag_ms`` -> ``--max-lag-ms``."""
    return "--" + key.replace("_", "-")


def knob(p: Any, name: str, kind: Callable, text: str | None = None) -> None:
    """The flag of the config key ``name`` (``bench.static.epochs`` -> ``--epochs``) with the
    schema's default; a list default goes through ``kind`` as a command line's would."""
    value = default(name)
    shown = "%(default)s"
    if isinstance(value, list):
        shown = ",".join(f"{v:g}" for v in value)
        value = kind(shown)
    text = text or describe(name)
    p.add_argument(
        flag(name.rsplit(".", 1)[1]), type=kind, default=value, help=f"{text} (default {shown})"
    )


def _fmt(x: float) -> str:
    return "nan" if x != x else f"{x:.1f}"


def tokenizer_input(path: str) -> str:
    """The tokenizer file only, for provenance: digesting a whole model directory would read
    every weight."""
    tok = Path(path)
    return str(tok if tok.is_file() else tok / "tokenizer.json")


def add_filters(p: argparse.ArgumentParser, *, type_required: bool) -> None:
    """``--dataset-type`` and the length filters (bench.dataset.*)."""
    p.add_argument(
        "--dataset-type",
        choices=DATASET_TYPES,
        required=type_required,
        default=None if type_required else default("bench.dataset.type"),
        help="generated/custom: `llmbuild bench generate-dataset` JSONL"
        + ("" if type_required else " (default %(default)s)"),
    )
    for key in ("max_prompt_tokens", "max_tokens", "output_len"):
        knob(p, f"bench.dataset.{key}", int)


def load_filtered(args: argparse.Namespace, path: str, option: str) -> tuple[list, Any]:
    """The dataset file at ``path`` (given as ``option``) through the filter flags."""
    from llmbuild.bench.datasets import load_dataset
    from llmbuild.bench.prompts import load_tokenizer

    return load_dataset(
        path,
        args.dataset_type,
        load_tokenizer(args.tokenizer),
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        output_len=args.output_len,
        flag=option,
    )


def add_common(p: argparse.ArgumentParser, *, seed: int, workload: dict[str, Any]) -> None:
    """The flags of both benchmarks; ``seed`` and ``workload`` (api, output_mode, speculative,
    lora_mix) are the verb's defaults."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", help="service endpoint file (JSON), waited on until ready")
    where.add_argument("--base-url", help="or the service's base URL, e.g. http://host:8000/v1")
    p.add_argument("--tokenizer", required=True, help="served model dir with tokenizer.json")
    p.add_argument("--output", required=True, help="CSV, one row per cell")
    p.add_argument("--records", required=True, help="JSONL, one line per request")
    p.add_argument(
        "--api",
        choices=("completions", "chat"),
        default=workload["api"],
        help="/v1/completions (raw prompt) or /v1/chat/completions (server's chat template)",
    )
    p.add_argument(
        "--output-mode",
        choices=("forced", "natural"),
        default=workload["output_mode"],
        help="forced: ignore_eos + min_tokens, exactly the output length; natural: a cap only",
    )
    p.add_argument(
        "--speculative",
        action=argparse.BooleanOptionalAction,
        default=workload["speculative"],
        help="speculative decoding: count output tokens from the stream's usage (required)",
    )
    p.add_argument(
        "--lora-mix",
        default=workload.get("lora_mix"),
        help="model names with weights, e.g. lora1=3,lora2=1,base=1 (multi-LoRA traffic)",
    )
    p.add_argument("--seed", type=int, default=seed)
    add_client(p)
    for what in ("ttft", "tpot", "e2el"):
        knob(p, f"plot.slo_{what}_ms", float, f"{what.upper()} objective of goodput, ms")
    gates = p.add_argument_group("gates (see llmbuild.bench.gate; columns in bench.metrics)")
    add_failure(gates, verdict="bench_validity", outputs="the records and the would-be CSV")
    for key, text in (
        (
            "min_rate_fraction",
            "a dynamic row is invalid when it sent below this fraction of its target rate",
        ),
        ("max_lag_ms", "a row is invalid when its client scheduling lag p99 exceeds this"),
    ):
        gates.add_argument(
            flag(key),
            type=float,
            default=default(f"gates.{key}"),
            help=f"{text} (default %(default)s)",
        )
    gates.add_argument(
        "--gate-mode",
        choices=("fail", "warn"),
        default=default("gates.mode"),
        help="invalid rows: fail (no outputs) or warn (write them with valid=False and a warn "
        "verdict); a dead service fails either way (default %(default)s)",
    )


def add_client(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How a client of the service (a benchmark, an evaluation) reaches it."""
    p.add_argument("--model", default=None, help="served model name (default: endpoint's)")
    p.add_argument(
        "--api-key-env", default=None, help="name of the environment variable holding the API key"
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=default("serve.ready_timeout"),
        help="seconds to wait for the service to be ready (default %(default)s)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds before one request counts as failed (default %(default)s)",
    )


def add_failure(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, *, verdict: str, outputs: str
) -> None:
    """The service gate's flags (``llmbuild.bench.gate``), for a benchmark or an evaluation."""
    text = (
        "failed requests allowed, as a fraction of those sent; more, or a service that died, "
        "fails the command and writes nothing"
    )
    knob(p, "gates.max_failed_fraction", float, text)
    p.add_argument("--verdict", default=None, help=f"{verdict} verdict JSON, written on success")
    p.add_argument(
        "--keep-on-failure",
        default=None,
        metavar="DIR",
        help=f"on failure, move {outputs} here for diagnosis",
    )


def request_mix(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark config's ``workload`` and ``model_mix``, from the flags."""
    from llmbuild.bench.workload import ModelMix, Workload

    return {
        "workload": Workload(
            api=args.api, output_mode=args.output_mode, speculative=args.speculative
        ),
        "model_mix": ModelMix.parse(args.lora_mix) if args.lora_mix else None,
    }


def checks(args: argparse.Namespace) -> Any:
    """The flags every benchmark checks before it runs; the SLO goodput is measured against."""
    from llmbuild.bench.metrics import SLO

    if args.request_timeout <= 0:
        raise UserError("must be > 0 seconds", field="--request-timeout")
    gate_checks(args)
    return SLO(ttft_ms=args.slo_ttft_ms, tpot_ms=args.slo_tpot_ms, e2el_ms=args.slo_e2el_ms)


def gate_checks(args: argparse.Namespace) -> tuple[Any, Any]:
    """The gate flags, checked before anything runs: (limits, keep-on-failure dir)."""
    from llmbuild.bench import gate
    from llmbuild.bench.metrics import Limits

    limits = Limits(
        min_rate_fraction=args.min_rate_fraction,
        max_lag_ms=args.max_lag_ms,
        max_failed_fraction=args.max_failed_fraction,
    )
    return limits, gate.check_keep_dir(args.keep_on_failure)


def connect(args: argparse.Namespace) -> tuple[Any, Any]:
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


def cell_line(prefix: str, row: dict) -> str:
    server = []  # the server's counters (llmbuild.serve.counters), where it has them
    rate = row.get("prefix_cache_hit_rate", float("nan"))
    if rate == rate:
        server.append(f"prefix cache hits {rate:.1%}")
    rate = row.get("spec_acceptance_rate", float("nan"))
    if rate == rate:
        server.append(f"draft acceptance {rate:.1%}")
    return (
        f"{prefix}: {row['successes']}/{row['successes'] + row['failures']} ok, "
        f"p50/p90 TTFT {_fmt(row['median_ttft_ms'])}/{_fmt(row['p90_ttft_ms'])} ms, "
        f"p90 TPOT {_fmt(row['p90_tpot_ms'])} ms, "
        f"output {_fmt(row['output_throughput'])} tok/s, "
        f"sent at {_fmt(row['achieved_request_rate'])} req/s, "
        f"p99 client lag {row['p99_sched_lag_ms']:.2f} ms"
        + "".join(f", {s}" for s in server)
        + (f", first error: {row['first_error'][:200]}" if row["failures"] else "")
    )


def measure(
    args: argparse.Namespace,
    command: str,
    connected: tuple[Any, Any],
    inputs: list[str],
    started: float,
    run: Callable[[IO[str]], list[dict]],
) -> int:
    """``run(records_file)`` -> rows, holding the service's benchmark lock; then the gates and
    the outputs (``_finish``)."""
    from llmbuild.bench import gate

    endpoint, info = connected
    with gate.Staged() as staged:
        with _exclusive(endpoint), staged.open(args.records) as frec:
            rows = run(frec)
        return _finish(args, command, rows, staged, inputs, started, endpoint, info)


def _finish(args, command, rows, staged, inputs, started, endpoint, info) -> int:
    """The gates, then the outputs: published only when both gates pass (or warn)."""
    from llmbuild.bench import gate
    from llmbuild.bench.metrics import mark_validity
    from llmbuild.bench.static import write_csv
    from llmbuild.gates import verdict as V

    limits, keep = gate_checks(args)
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
