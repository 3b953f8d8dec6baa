"""`llmbuild serve run|wait|cpu`: a vLLM service as a Snakemake service() job, its consumers.

    exec llmbuild serve run --input DIR --endpoint FILE [knobs] > LOG 2>&1
    llmbuild serve wait --endpoint FILE --timeout 600
    llmbuild serve cpu [--json]     # which kernel path (and dtype) this CPU takes

Imports nothing heavy: vLLM runs in a child process of `serve run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from typing import Any

from llmbuild.schema import default, describe, node
from llmbuild.serve.config import ServeConfig


def _log(msg: str) -> None:
    print(f"[serve {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServeConfig field: ``--field-name`` (or the field's own spelling), typed
    as the field, booleans ``--x/--no-x``, tuples repeatable. A field that is a config key
    ``serve.<field>`` takes the schema's default, choices and description."""
    hints = typing.get_type_hints(ServeConfig)
    for f in dataclasses.fields(ServeConfig):
        kind = hints[f.name]
        repeated = typing.get_origin(kind) is tuple
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # X | None
        kw: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help")}
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        try:
            key = node(f"serve.{f.name}")
        except KeyError:
            key = None
        if key is not None:
            kw["default"] = default(f"serve.{f.name}")
            kw["help"] = describe(f"serve.{f.name}") or kw["help"]
            if "enum" in key:
                kw["choices"] = key["enum"]
        elif f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kw["default"] = f.default_factory()
        else:
            kw["required"] = True
        if repeated:
            kw.update(action="append", default=list(kw["default"]))
        elif base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = base
        parser.add_argument(f.metadata.get("flag", "--" + f.name.replace("_", "-")), **kw)


def _config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)})


def _run(args: argparse.Namespace) -> int:
    from llmbuild import provenance
    from llmbuild.serve import dtype as dtypes
    from llmbuild.serve.vllm import check_device, check_paths, resolve_dtype, run_service

    started = time.time()
    cfg = _config_from_args(args)
    check_paths(cfg)
    check_device(cfg)
    cpu = dtypes.cpu_features()
    cfg, choice = resolve_dtype(cfg, cpu)
    inputs = [cfg.model] + ([cfg.chat_template] if cfg.chat_template else [])
    # Written before the server starts, so hashing a large model never disturbs benchmarks.
    provenance.write(
        args.endpoint,
        command="llmbuild serve run",
        args={k: v for k, v in vars(args).items() if k != "func"} | {"config": cfg.as_dict()},
        inputs=inputs,
        started=started,
        extra={"dtype": choice.dtype, "dtype_reason": choice.reason, "cpu": cpu.summary()},
        digest_output=False,
    )
    return run_service(
        cfg,
        args.endpoint,
        sink=sys.stdout.buffer,
        log=_log,
        dtype_choice=choice,
    )


def cpu_report(features) -> dict[str, object]:  # features: dtype.CpuFeatures
    """What `serve cpu` says: the CPU, its AMX/bf16 support, and the int8 W8A8 path it takes."""
    from llmbuild.serve import dtype as dtypes

    int8_dtype, int8_kernel = dtypes.int8_path(features)
    w4_dtype, w4_kernel = dtypes.w4a16_path(features)
    return features.summary() | {
        "has_avx512": features.has_avx512,
        "has_bf16": features.has_bf16,
        "int8_w8a8_dtype": int8_dtype,
        "int8_w8a8_kernel": int8_kernel,
        "w4a16_dtype": w4_dtype,
        "w4a16_kernel": w4_kernel,
    }


def cpu_line(report: dict[str, object]) -> str:
    def yes(key: str) -> str:
        return "yes" if report[key] else "no"

    return (
        f"cpu: {report['model']} ({report['arch']}); AMX: {yes('has_amx')}; "
        f"AVX-512 bf16: {yes('has_avx512_bf16')}; int8 W8A8 served in "
        f"{report['int8_w8a8_dtype']} ({report['int8_w8a8_kernel']})"
    )


def _cpu(args: argparse.Namespace) -> int:
    from llmbuild.errors import UserError
    from llmbuild.serve import dtype as dtypes

    text = None
    if args.cpuinfo is not None:
        try:
            with open(args.cpuinfo, errors="replace") as fh:
                text = fh.read()
        except OSError as exc:
            raise UserError(f"cannot read: {exc.strerror}", path=args.cpuinfo) from exc
    report = cpu_report(dtypes.cpu_features(text, arch=args.arch))
    print(json.dumps(report) if args.json else cpu_line(report))
    return 0


def _wait(args: argparse.Namespace) -> int:
    from llmbuild.serve.endpoint import wait_ready

    t0 = time.monotonic()
    ep = wait_ready(args.endpoint, args.timeout)
    _log(f"ready after {time.monotonic() - t0:.1f} s: {ep.base_url} (model {ep.model})")
    print(ep.base_url)
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    run = verbs.add_parser(
        "run",
        help="run a vLLM OpenAI-compatible service until SIGTERM (a Snakemake service job)",
        description="Start vLLM's OpenAI-compatible server on a free 127.0.0.1 port, write "
        "the endpoint JSON (state starting, then ready), and stop the server on SIGTERM/SIGINT. "
        "Use as `exec llmbuild serve run ...` so the signal reaches this process.",
    )
    add_config_flags(run)
    run.add_argument("--endpoint", required=True, help="endpoint JSON file to write")
    run.set_defaults(func=_run)

    wait = verbs.add_parser(
        "wait",
        help="wait until a service's endpoint is ready; print its base URL",
    )
    wait.add_argument("--endpoint", required=True, help="endpoint JSON written by `serve run`")
    wait.add_argument("--timeout", type=float, default=600.0, help="seconds (600)")
    wait.set_defaults(func=_wait)

    cpu = verbs.add_parser(
        "cpu",
        help="say which vLLM kernel path (and dtype) this CPU takes",
        description="One line: the CPU, whether it has AMX and AVX-512 bf16, and the dtype an "
        "int8 W8A8 variant is served with here (AMX: 16-bit; otherwise the oneDNN kernel in "
        "float32). --json prints the same as a JSON object.",
    )
    cpu.add_argument("--json", action="store_true", help="a JSON object instead of the line")
    cpu.add_argument("--cpuinfo", help="read this /proc/cpuinfo text instead of this machine's")
    cpu.add_argument("--arch", help="architecture of --cpuinfo (default: inferred from it)")
    cpu.set_defaults(func=_cpu)
