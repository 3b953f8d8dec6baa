"""What does a vLLM service on CPU cost to start: its engine core forked from a preloaded fork
server or spawned, its model in the engine process or in a worker process of its own?
(issue 15: the graph's services are most of its wall time)

For a served model directory, starts vLLM's OpenAI server the way `llmbuild serve run` does
(llmbuild.serve.config: build_argv, child_env) in three modes, rotating their order over
--runs rounds so load drifts hit all alike:

- preloaded: llmbuild's default with one CPU rank (executor "uni", the model in the engine
  process; the engine core forked from a fork server that imported vLLM meanwhile,
  serve/boot.py);
- spawned: the same with vLLM's own start method (the engine core spawned: a fresh
  interpreter importing torch and vLLM once the API server has);
- worker: vLLM's own CPU default (spawned, executor "mp": one more interpreter per rank).

Each start is timed to the first 200 from /health, then --requests completions of
--max-tokens tokens are sent 8 at a time (ignore_eos). Prints the medians and the ratios.

    .envs/serve-cpu/bin/python benchmarks/serve_cold_start.py results/tiny-llama/sft/hf [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from llmbuild.serve.config import ServeConfig, build_argv, child_env  # noqa: E402
from llmbuild.serve.endpoint import free_port, is_healthy  # noqa: E402

WORKER = ("--distributed-executor-backend", "mp")
MODES: dict[str, dict[str, object]] = {
    "preloaded": {},
    "spawned": {"preload_engine": False},
    "worker": {"preload_engine": False, "extra_args": WORKER},
}


def one(cfg: ServeConfig, requests: int, max_tokens: int, timeout: float) -> tuple[float, float]:
    """(seconds to healthy, seconds for the burst) of one server start."""
    port = free_port()
    argv = build_argv(cfg, "127.0.0.1", port)
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=child_env(cfg, os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while not is_healthy(base):
            if proc.poll() is not None:
                raise SystemExit(f"serve_cold_start: vLLM exited {proc.returncode}: {argv}")
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"serve_cold_start: not healthy after {timeout} s")
            time.sleep(0.2)
        ready = time.perf_counter() - started
        body = {"model": cfg.served_name, "prompt": "uppercase: abc def"}
        body |= {"max_tokens": max_tokens, "ignore_eos": True}
        data = json.dumps(body).encode()

        def send(_: int) -> None:
            req = urllib.request.Request(
                f"{base}/v1/completions", data, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=120) as resp:
                resp.read()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(requests)))
        return ready, time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a served model directory (Hugging Face layout)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    base = ServeConfig(
        model=args.model, served_model_name="m", dtype=args.dtype, max_model_len=512,
        max_num_seqs=16, enforce_eager=True, kv_cache_space_gib=1,
    )  # fmt: skip
    got: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    for i in range(args.runs):
        order = list(MODES)[i % len(MODES) :] + list(MODES)[: i % len(MODES)]
        for mode in order:
            cfg = replace(base, **MODES[mode])  # type: ignore[arg-type]
            got[mode].append(one(cfg, args.requests, args.max_tokens, args.timeout))
            ready, burst = got[mode][-1]
            print(f"run {i + 1} {mode:9s} ready {ready:6.1f} s  burst {burst:5.2f} s", flush=True)
    med = {m: [statistics.median(x[k] for x in got[m]) for k in (0, 1)] for m in MODES}
    for mode, (ready, burst) in med.items():
        print(f"median {mode:9s} ready {ready:6.1f} s  burst {burst:5.2f} s")
    for other in ("spawned", "worker"):
        ready = med[other][0] / med["preloaded"][0]
        burst = med[other][1] / med["preloaded"][1]
        print(f"{other} / preloaded: ready {ready:.2f}x, burst {burst:.2f}x")


if __name__ == "__main__":
    main()
