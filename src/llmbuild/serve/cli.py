"""`llmbuild serve run|wait|cpu`: a vLLM service as a Snakemake service() job, its consumers.

    exec llmbuild serve run --model DIR --endpoint FILE [knobs] > LOG 2>&1
    llmbuild serve wait --endpoint FILE --timeout 600
    llmbuild serve cpu [--json]     # which kernel path (and dtype) this CPU takes

Imports nothing heavy: vLLM runs in a child process of `serve run`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from llmbuild.serve.vllm import DEVICES, DTYPES


def _log(msg: str) -> None:
    print(f"[serve {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _config_from_args(args: argparse.Namespace):  # -> ServeConfig
    from llmbuild.serve.vllm import ServeConfig

    return ServeConfig(
        model=args.model,
        device=args.device,
        served_model_name=args.served_model_name,
        dtype=args.dtype,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        tensor_parallel_size=args.tensor_parallel_size,
        block_size=args.block_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_space_gib=args.kv_cache_space_gib,
        kv_cache_dtype=args.kv_cache_dtype,
        quantization=args.quantization,
        chat_template=args.chat_template,
        trust_remote_code=args.trust_remote_code,
        enable_prefix_caching=args.enable_prefix_caching,
        enforce_eager=args.enforce_eager,
        seed=args.seed,
        lora_modules=tuple(args.lora_module),
        max_lora_rank=args.max_lora_rank,
        max_loras=args.max_loras,
        speculative_config=args.speculative_config,
        cpu_omp_threads_bind=args.cpu_omp_threads_bind,
        extra_args=tuple(args.vllm_arg),
    )


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
        args.ready_timeout,
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
    run.add_argument("--model", required=True, help="Hugging Face model directory")
    run.add_argument("--endpoint", required=True, help="endpoint JSON file to write")
    run.add_argument("--ready-timeout", type=float, default=600.0, help="seconds (600)")
    run.add_argument("--device", choices=DEVICES, default="cpu")
    run.add_argument("--served-model-name", default=None, help="default: the --model path")
    run.add_argument("--max-num-seqs", type=int)
    run.add_argument("--max-model-len", type=int)
    run.add_argument("--max-num-batched-tokens", type=int)
    run.add_argument("--tensor-parallel-size", type=int, default=1)
    run.add_argument("--block-size", type=int)
    run.add_argument("--gpu-memory-utilization", type=float)
    run.add_argument(
        "--kv-cache-space-gib",
        type=float,
        help="KV cache size in GiB (CPU default 1; passed as --kv-cache-memory-bytes)",
    )
    run.add_argument("--kv-cache-dtype")
    run.add_argument("--quantization", help="e.g. compressed-tensors (default: from config)")
    run.add_argument("--chat-template", help="chat template file (default: the tokenizer's)")
    run.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="auto (default): the dtype the variant's kernels accept on this CPU/device, "
        "the model's own where possible; vLLM always gets it explicitly",
    )
    run.add_argument("--trust-remote-code", action=argparse.BooleanOptionalAction, default=False)
    run.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    run.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="skip torch.compile (on a small CPU box: ~1 min faster start)",
    )
    run.add_argument("--seed", type=int)
    run.add_argument(
        "--lora-module", action="append", default=[], metavar="NAME=PATH", help="repeatable"
    )
    run.add_argument("--max-lora-rank", type=int)
    run.add_argument("--max-loras", type=int)
    run.add_argument("--speculative-config", metavar="JSON")
    run.add_argument(
        "--cpu-omp-threads-bind",
        help="VLLM_CPU_OMP_THREADS_BIND for device cpu (auto, nobind, or core ids like 0-3)",
    )
    run.add_argument(
        "--vllm-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra server argument, repeatable; write it as --vllm-arg=--flag",
    )
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
