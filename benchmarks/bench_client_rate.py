"""How fast can the benchmark client keep its schedule? Its ceiling against a zero-delay mock.

Drives tests/mock_openai.py, run as a process of its own with no configured delays, with the
dynamic benchmark's open-loop request path (Poisson arrivals, aiohttp SSE streaming, one
record per request), and searches for the highest request rate the client sustains:
achieved request rate >= 99% of the target, scheduling lag p99 < 5 ms, no failures. It
doubles the rate until a trial fails, then bisects. A real benchmark whose request rate comes
near this ceiling is measuring the client, not the service.

    .envs/bench/bin/python benchmarks/bench_client_rate.py [--seconds 5] [--tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from llmbuild.bench.client import Endpoint  # noqa: E402
from llmbuild.bench.dynamic import arrival_times, run_schedule  # noqa: E402
from llmbuild.bench.metrics import compute_metrics, validity  # noqa: E402
from llmbuild.bench.records import RequestSpec  # noqa: E402

MIN_RATIO, MAX_P99_LAG_MS = 0.99, 5.0


def start_mock(tmp: Path) -> tuple[subprocess.Popen, Endpoint]:
    ep_file = tmp / "mock.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "mock_openai.py"), "--endpoint", str(ep_file)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not ep_file.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("the mock server did not start")
        time.sleep(0.05)
    info = json.loads(ep_file.read_text())
    return proc, Endpoint(info["base_url"], info["model"])


def trial(endpoint: Endpoint, rate: float, seconds: float, tokens: int, seed: int) -> dict:
    n = max(int(rate * seconds), 100)
    specs = [RequestSpec("x " * 32, 32, tokens, f"r{i}") for i in range(n)]
    arrivals = arrival_times(rate, n, seed)
    cpu = time.process_time()
    records, duration = asyncio.run(run_schedule(endpoint, specs, arrivals, None, 30.0))
    cpu_ms = (time.process_time() - cpu) * 1000 / n
    last = max(r.start_time for r in records)
    v = validity(records, target_rate=rate, achieved_rate=n / last)
    m = compute_metrics(records, duration)
    ok = (
        v["achieved_request_rate"] >= MIN_RATIO * rate
        and v["p99_sched_lag_ms"] < MAX_P99_LAG_MS
        and v["failures"] == 0
    )
    return {"rate": rate, "n": n, "ok": ok, "cpu_ms": cpu_ms, **v, **m}


def show(r: dict) -> None:
    print(
        f"{r['rate']:9.1f} {r['n']:6d} {r['achieved_request_rate']:9.1f} "
        f"{r['achieved_request_rate'] / r['rate']:6.3f} {r['p99_sched_lag_ms']:8.2f} "
        f"{r['max_sched_lag_ms']:8.2f} {r['median_ttft_ms']:8.2f} {r['max_in_flight']:6d} "
        f"{r['failures']:5d} {r['cpu_ms']:6.2f}  {'pass' if r['ok'] else 'FAIL'}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start", type=float, default=50.0, help="first rate tried, req/s")
    ap.add_argument("--seconds", type=float, default=5.0, help="schedule length of a trial")
    ap.add_argument("--tokens", type=int, default=16, help="output tokens per request")
    ap.add_argument("--bisect", type=int, default=5, help="bisection steps after doubling")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (other processes compete "
        f"for them); {args.tokens} output tokens/request; mock in its own process"
    )
    print(
        "     rate      n  achieved  ratio  p99lag   maxlag  p50ttft  inflt fails cpu/req"
        "  (req/s; ms; cpu/req = the client's CPU ms per request)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint = start_mock(Path(tmp))
        try:
            trial(endpoint, 20.0, 1.0, args.tokens, args.seed)  # warm-up
            best, worst = 0.0, None
            rate = args.start
            while worst is None:  # double while it passes
                r = trial(endpoint, rate, args.seconds, args.tokens, args.seed)
                show(r)
                if r["ok"]:
                    best, rate = rate, rate * 2
                else:
                    worst = rate
            while best == 0.0 and worst > 2.0:  # or halve until it does
                rate = worst / 2
                r = trial(endpoint, rate, args.seconds, args.tokens, args.seed)
                show(r)
                best, worst = (rate, worst) if r["ok"] else (best, rate)
            for _ in range(args.bisect if best > 0 else 0):
                rate = (best + worst) / 2
                r = trial(endpoint, rate, args.seconds, args.tokens, args.seed)
                show(r)
                best, worst = (rate, worst) if r["ok"] else (best, rate)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(
        f"max sustained request rate: {best:.0f} req/s (achieved >= {MIN_RATIO:.0%} of target, "
        f"scheduling lag p99 < {MAX_P99_LAG_MS:g} ms, no failures; {args.tokens} tokens/request)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
