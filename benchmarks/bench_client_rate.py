"""How fast can the benchmark client drive a service? Its ceiling against a zero-delay mock.

Runs the static benchmark's request path (aiohttp SSE streaming, one record per request)
against tests/mock_openai.py with no configured delays, so every millisecond measured is the
client's own (plus the mock's) overhead. A real benchmark whose request rate comes near this
ceiling is measuring the client, not the service.

    .envs/bench/bin/python benchmarks/bench_client_rate.py [--requests 400] [--tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mock_openai import MockConfig, MockOpenAI  # noqa: E402

from llmbuild.bench.client import (  # noqa: E402
    Endpoint,
    make_session,
    run_concurrent,
    stream_completion,
)
from llmbuild.bench.records import RequestSpec  # noqa: E402


async def drive(endpoint: Endpoint, n: int, tokens: int, concurrency: int):
    specs = [RequestSpec("x " * 32, 32, tokens, f"r{i}") for i in range(n)]
    async with make_session(concurrency, 60) as session:
        t0 = time.perf_counter()
        recs = await run_concurrent(
            specs, concurrency, lambda s: stream_completion(session, endpoint, s, t0)
        )
        return recs, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--concurrency", default="1,8,32")
    args = ap.parse_args()
    print("concurrency  req/s  chunks/s  median_ttft_ms  median_itl_ms  failed")
    with MockOpenAI(MockConfig()) as srv:
        ep = Endpoint(srv.base_url, srv.config.model)
        for c in (int(x) for x in args.concurrency.split(",")):
            recs, dur = asyncio.run(drive(ep, args.requests, args.tokens, c))
            ok = [r for r in recs if r.success]
            itl = [g for r in ok for g in r.itl]
            print(
                f"{c:11d}  {len(ok) / dur:5.0f}  {len(ok) * args.tokens / dur:8.0f}  "
                f"{statistics.median(r.ttft for r in ok) * 1000:14.2f}  "
                f"{statistics.median(itl) * 1000 if itl else float('nan'):13.3f}  "
                f"{len(recs) - len(ok):6d}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
