"""How fast can a benchmark client keep its schedule? Ours against vLLM's, on a zero-delay mock.

Both clients drive tests/mock_openai.py (a process of its own, no configured delays) at a
constant request rate (evenly spaced sends, vLLM's ``--burstiness inf``), 16 output tokens per
request, ``--seconds`` of schedule per trial, and each one's ceiling is searched the same way:
the highest rate at which it sends with achieved rate >= 99% of the target, scheduling lag
p99 < 5 ms and no failure. The rate doubles until a trial fails, then bisects. Rounds
alternate the clients; the medians of the ceilings and their ratio are printed, with the
mock's own CPU per request and the rate it could serve on one core (so it is known not to be
the limit).

- ours: llmbuild's dynamic benchmark path (``run_schedule``: prepared requests, the pacer
  sends, records per request);
- vLLM's: ``vllm bench serve``'s own code, run from the serve stack's environment
  (``--vllm-python``, default .envs/serve-cpu/bin/python). Its ``vllm`` entry point is broken
  in the CPU build, so the parser is built from ``vllm.benchmarks.serve.add_cli_args`` and
  ``vllm.benchmarks.serve.main`` runs it (random dataset, 32 prompt tokens, ``--ignore-eos``).
  Its lag is measured the same way, by watching it: its schedule (``get_request``'s start
  time plus ``(i + 1) / rate``) against each request's ``start_time`` (the moment its
  request function sends).

    .envs/bench/bin/python benchmarks/bench_client_rate.py [--rounds 3] [--seconds 5]

Compare only figures of one run: the machine may be shared (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MIN_RATIO, MAX_P99_LAG_MS = 0.99, 5.0
PROMPT_TOKENS = 32


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def verdict(rate: float, n: int, sends: list[float], lags: list[float], failures: int) -> dict:
    """The criterion, for either client: ``sends`` in seconds since the schedule's start."""
    import numpy as np

    last = float(max(sends))
    achieved = n / last if last > 0 else float("inf")
    p99 = float(np.percentile(np.asarray(lags) * 1000, 99))
    ok = bool(achieved >= MIN_RATIO * rate and p99 < MAX_P99_LAG_MS and failures == 0)
    return {
        "rate": rate,
        "n": n,
        "achieved": achieved,
        "p99_lag_ms": p99,
        "max_lag_ms": float(max(lags)) * 1000,
        "failures": int(failures),
        "ok": ok,
    }


def search(trial: Callable[[float], dict], start: float, bisect: int, show: Callable) -> float:
    """The highest passing rate: double from ``start`` while trials pass, then bisect."""
    best, worst, rate = 0.0, None, start
    while worst is None:
        r = trial(rate)
        show(r)
        if r["ok"]:
            best, rate = rate, rate * 2
        else:
            worst = rate
    while best == 0.0 and worst > 2.0:
        rate = worst / 2
        r = trial(rate)
        show(r)
        best, worst = (rate, worst) if r["ok"] else (best, rate)
    for _ in range(bisect if best > 0 else 0):
        rate = (best + worst) / 2
        r = trial(rate)
        show(r)
        best, worst = (rate, worst) if r["ok"] else (best, rate)
    return best


# ----------------------------------------------------------------------------- ours
def our_trial(endpoint, rate: float, seconds: float, tokens: int, mock_pid: int) -> dict:
    import numpy as np

    from llmbuild.bench.dynamic import run_schedule
    from llmbuild.bench.records import RequestSpec

    n = max(int(rate * seconds), 100)
    specs = [RequestSpec("x " * PROMPT_TOKENS, PROMPT_TOKENS, tokens, f"r{i}") for i in range(n)]
    arrivals = np.arange(1, n + 1) / rate
    cpu, mock_cpu = time.process_time(), cpu_seconds(mock_pid)
    records, _ = asyncio.run(run_schedule(endpoint, specs, arrivals, None, 30.0))
    out = verdict(
        rate,
        n,
        [r.start_time for r in records],
        [r.sched_lag for r in records],
        sum(not r.success for r in records),
    )
    out["cpu_ms"] = (time.process_time() - cpu) * 1000 / n
    out["mock_cpu_ms"] = (cpu_seconds(mock_pid) - mock_cpu) * 1000 / n
    return out


# ----------------------------------------------------------------------------- vLLM's
def vllm_worker(a: argparse.Namespace) -> int:
    """Runs in the serve stack's Python: vLLM's own benchmark, watched; one JSON line per
    trial on stdout, then the ceiling."""
    import numpy as np
    import vllm.benchmarks.serve as S

    from llmbuild.data.synth import corpus_documents
    from llmbuild.model.tiny import save_tokenizer, train_tokenizer

    tok_dir = Path(a.work) / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        save_tokenizer(train_tokenizer(corpus_documents(200, 0), 512), tok_dir, 4096)
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # older layouts
        from vllm.utils import FlexibleArgumentParser  # type: ignore[no-redef]

    class Clock:
        """``time`` for vLLM's module, noting the first wall time its pacer reads."""

        def __init__(self) -> None:
            self.armed, self.start = False, None

        def __getattr__(self, name: str):
            return getattr(time, name)

        def time(self) -> float:
            t, p = time.time(), time.perf_counter()
            if self.armed:
                self.armed, self.start = False, (t, p)
            return t

    clock = Clock()
    S.time = clock  # type: ignore[attr-defined]
    sends: list = []
    state = {"on": False}
    original_get_request = S.get_request

    async def get_request(*args, **kwargs):
        gen = original_get_request(*args, **kwargs)
        clock.armed, state["on"] = True, True
        state["cpu"] = time.process_time()
        async for item in gen:
            yield item

    S.get_request = get_request
    funcs = S.ASYNC_REQUEST_FUNCS
    original_func = funcs[a.backend]

    async def watched(*args, **kwargs):
        out = await original_func(*args, **kwargs)
        if state["on"]:
            sends.append(out)
            state["cpu_end"] = time.process_time()
        return out

    funcs[a.backend] = watched

    def trial(rate: float) -> dict:
        n = max(int(rate * a.seconds), 100)
        parser = FlexibleArgumentParser()
        S.add_cli_args(parser)
        args = parser.parse_args(
            ["--backend", a.backend, "--base-url", a.base_url, "--endpoint", "/v1/completions"]
            + ["--model", a.model, "--tokenizer", str(tok_dir), "--dataset-name", "random"]
            + ["--random-input-len", str(PROMPT_TOKENS), "--random-output-len", str(a.tokens)]
            + ["--random-range-ratio", "0", "--num-prompts", str(n), "--ignore-eos"]
            + ["--request-rate", str(rate), "--burstiness", "inf", "--disable-tqdm"]
            + ["--seed", "0"]
        )
        sends.clear()
        state["on"] = False
        with contextlib.redirect_stdout(io.StringIO()):
            S.main(args)
        cpu_ms = (state["cpu_end"] - state["cpu"]) * 1000 / n  # its schedule's run only
        assert clock.start is not None and len(sends) == n, (clock.start, len(sends), n)
        t0 = clock.start[1]
        starts = np.asarray([o.start_time for o in sends]) - t0
        due = np.arange(1, n + 1) / rate
        lags = np.maximum(starts - due, 0.0)
        out = verdict(rate, n, list(starts), list(lags), sum(not o.success for o in sends))
        out["cpu_ms"] = cpu_ms
        return out

    if a.fixed:
        r = trial(a.fixed)
        print(json.dumps(r), flush=True)
        print(json.dumps({"ceiling": a.fixed if r["ok"] else 0.0}), flush=True)
        return 0
    best = search(trial, a.start, a.bisect, lambda r: print(json.dumps(r), flush=True))
    print(json.dumps({"ceiling": best}), flush=True)
    return 0


def run_vllm(a: argparse.Namespace, base_url: str, work: Path, show: Callable) -> float:
    cmd = [a.vllm_python, str(Path(__file__).resolve()), "--vllm-worker"]
    cmd += ["--base-url", base_url.removesuffix("/v1"), "--work", str(work)]
    cmd += ["--seconds", str(a.seconds), "--tokens", str(a.tokens), "--start", str(a.start)]
    cmd += ["--bisect", str(a.bisect)] + (["--fixed", str(a.fixed)] if a.fixed else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    ceiling = None
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "ceiling" in r:
            ceiling = r["ceiling"]
        else:
            show(r)
    if proc.wait() or ceiling is None:
        raise SystemExit(f"vLLM's client failed (exit {proc.returncode}): {' '.join(cmd)}")
    return ceiling


# ----------------------------------------------------------------------------- driver
def start_mock(tmp: Path):
    from llmbuild.bench.client import Endpoint

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


def line(who: str, r: dict) -> None:
    extra = f" mock {r['mock_cpu_ms']:.3f}" if "mock_cpu_ms" in r else ""
    print(
        f"  {who:6s} {r['rate']:8.0f} {r['n']:6d} {r['achieved']:9.1f} "
        f"{r['achieved'] / r['rate']:6.3f} {r['p99_lag_ms']:8.2f} {r['max_lag_ms']:8.2f} "
        f"{r['failures']:5d} cpu {r['cpu_ms']:.3f}{extra}  {'pass' if r['ok'] else 'FAIL'}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="ceiling searches per client")
    ap.add_argument("--start", type=float, default=200.0, help="first rate tried, req/s")
    ap.add_argument("--seconds", type=float, default=5.0, help="schedule length of a trial")
    ap.add_argument("--tokens", type=int, default=16, help="output tokens per request")
    ap.add_argument("--bisect", type=int, default=4, help="bisection steps after doubling")
    ap.add_argument("--vllm-python", default=str(ROOT / ".envs/serve-cpu/bin/python"))
    ap.add_argument("--no-vllm", action="store_true", help="only our client")
    ap.add_argument(
        "--fixed",
        type=float,
        default=None,
        help="no search: each client at this rate, --rounds times; compares client CPU per "
        "request (what bounds the ceiling, and what a loaded machine does not distort)",
    )
    ap.add_argument("--vllm-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base-url", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="mock-model", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="openai", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.vllm_worker:
        return vllm_worker(a)
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; constant rate, "
        f"{a.tokens} output tokens/request, {a.seconds:g} s per trial; pass = achieved >= "
        f"{MIN_RATIO:.0%} of target, lag p99 < {MAX_P99_LAG_MS:g} ms, no failure"
    )
    print(
        "  client     rate      n  achieved  ratio   p99lag   maxlag fails  (req/s; ms; cpu ="
        " client CPU ms per request, mock = the mock's)"
    )
    ours: list[float] = []
    theirs: list[float] = []
    cpu_ours: list[float] = []
    cpu_theirs: list[float] = []
    mock_cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint = start_mock(Path(tmp))
        try:
            our_trial(endpoint, 50.0, 1.0, a.tokens, proc.pid)  # warm-up

            def trial(rate: float) -> dict:
                r = our_trial(endpoint, rate, a.seconds, a.tokens, proc.pid)
                if r["ok"]:
                    mock_cpu.append(r["mock_cpu_ms"])
                return r

            for k in range(a.rounds):
                print(f"round {k + 1}: ours", flush=True)
                if a.fixed:
                    r = trial(a.fixed)
                    line("ours", r)
                    cpu_ours.append(r["cpu_ms"])
                else:
                    ours.append(search(trial, a.start, a.bisect, lambda r: line("ours", r)))
                if not a.no_vllm:
                    print(f"round {k + 1}: vLLM's", flush=True)

                    def show(r: dict) -> None:
                        line("vllm", r)
                        cpu_theirs.append(r["cpu_ms"])

                    theirs.append(run_vllm(a, endpoint.base_url, Path(tmp), show))
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if a.fixed:
        mine = statistics.median(cpu_ours)
        print(f"client CPU per request at {a.fixed:g} req/s: ours {mine:.3f} ms", end="")
        if cpu_theirs:
            other = statistics.median(cpu_theirs)
            print(f", vLLM's {other:.3f} ms: ratio {other / mine:.2f}x (medians of {a.rounds})")
        else:
            print()
        return 0
    med = statistics.median(ours)
    print(f"ours:   {med:7.0f} req/s (median of {ours})")
    if mock_cpu:
        per = statistics.median(mock_cpu)
        room = 1000 / per / med
        print(
            f"mock:   {per:.3f} ms of its CPU per request (median over passing trials): "
            f"{1000 / per:,.0f} req/s on one core of its own, {room:.1f}x our ceiling"
            + (", so the mock is not the limit" if room >= 1.5 else ": it may be the limit")
        )
    if theirs:
        vmed = statistics.median(theirs)
        print(f"vLLM's: {vmed:7.0f} req/s (median of {theirs})")
        ratio = f"{med / vmed:.2f}x" if vmed > 0 else "undefined (vLLM's passed no rate)"
        print(f"ratio ours / vLLM's: {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
