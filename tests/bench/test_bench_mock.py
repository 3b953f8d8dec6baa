"""The static benchmark against tests/mock_openai.py: timing accuracy, failures, CLI."""

from __future__ import annotations

import csv
import json
import statistics
import threading
import time

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("numpy")
pytest.importorskip("tokenizers")

from mock_openai import MockConfig, MockOpenAI  # noqa: E402

from llmbuild.bench.client import Endpoint  # noqa: E402
from llmbuild.bench.prompts import PromptMaker, load_tokenizer  # noqa: E402
from llmbuild.bench.static import StaticConfig, run_static  # noqa: E402

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def maker(tokenizer_dir):
    return PromptMaker(load_tokenizer(tokenizer_dir))


def _run(srv, maker, cfg, **kw):
    import io

    buf = io.StringIO()
    rows = run_static(
        Endpoint(srv.base_url, srv.config.model),
        cfg,
        maker,
        records_out=buf,
        timeout_s=kw.pop("timeout_s", 30),
        **kw,
    )
    records = [json.loads(x) for x in buf.getvalue().splitlines()]
    return rows, records


def _timing_errors(rows, records, streams) -> list[str]:
    """Why the client's timings do not match the mock's; empty when they do.

    The mock runs in this process, so its timestamps share the client's clock. At
    concurrency 1 requests are sequential, so records and server streams pair up in order.
    """
    errors = []
    seq = [r for r in records if r["concurrency"] == 1]
    gaps = [
        abs(rec["ttft"] - (w[0] - a)) * 1000
        for rec, (a, w) in zip(seq, streams[: len(seq)], strict=True)
    ]
    if statistics.median(gaps) >= 2.0:
        errors.append(f"client TTFT vs server first write: gaps {gaps} ms")
    server_tpot = statistics.median((w[-1] - w[0]) / (len(w) - 1) for _, w in streams) * 1000
    client_tpot = statistics.median(
        (r["latency"] - r["ttft"]) / (r["output_tokens"] - 1) for r in records
    )
    if abs(client_tpot * 1000 - server_tpot) >= 2.0:
        errors.append(f"client TPOT {client_tpot * 1000} vs server {server_tpot} ms")
    # the configured delays, give or take how late the machine woke the mock's own timers
    late_ttft = max(0.0, statistics.median(w[0] - a for a, w in streams[: len(seq)]) * 1000 - 50)
    late_tpot = max(0.0, server_tpot - 10.0)
    if abs(rows[0]["median_ttft_ms"] - 50.0) >= 2.0 + late_ttft:
        errors.append(f"median TTFT {rows[0]['median_ttft_ms']} ms, configured 50")
    for row in rows:
        for col in ("median_tpot_ms", "median_itl_ms"):
            if abs(row[col] - 10.0) >= 2.0 + late_tpot:
                errors.append(f"c={row['concurrency']} {col} {row[col]} ms, configured 10")
    return errors


def test_measured_ttft_tpot_match_configured_delays(maker):
    cfg = StaticConfig((1, 2), (32,), (16,), epochs=3, seed=0)
    # Timing noise only ever adds delay, and other processes on a small machine cause it:
    # a run that misses by more than 2 ms is retried (up to 3 runs) before failing.
    for _ in range(3):
        with MockOpenAI(MockConfig(ttft_s=0.050, itl_s=0.010)) as srv:
            rows, records = _run(srv, maker, cfg)
        assert [r["num_requests"] for r in rows] == [3, 6]
        for row in rows:
            assert row["failures"] == 0 and row["completed"] == row["num_requests"]
            assert row["output_tokens_source"] == "usage" and row["output_len_mismatch"] == 0
            assert row["total_output_tokens"] == 16 * row["num_requests"]
            assert row["too_few_for_p99"] is True
        assert len(records) == 9 and all(len(r["itl"]) == 15 for r in records)
        errors = _timing_errors(rows, records, srv.counters.streams)
        if not errors:
            break
    assert not errors, errors

    # the request body asks for exactly output_len tokens, with usage in the stream
    body = srv.counters.bodies[0]
    assert body["max_tokens"] == 16 and body["min_tokens"] == 16 and body["ignore_eos"]
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert len(maker.tok.encode(body["prompt"]).ids) == 32


def test_concurrency_is_respected(maker):
    # 4 rounds of 4 requests of ~30 ms each take ~4 x 30 ms, not 16 x 30 ms
    cfg = StaticConfig((4,), (8,), (4,), epochs=4)
    with MockOpenAI(MockConfig(ttft_s=0.015, itl_s=0.005)) as srv:
        rows, records = _run(srv, maker, cfg)
    assert rows[0]["completed"] == 16
    assert rows[0]["duration_s"] < 0.3
    assert rows[0]["request_throughput"] > 16 / 0.3
    starts = sorted(r["start_time"] for r in records)
    # rounds of 4: each round starts together, the next when the last one ends (~30 ms)
    assert starts[3] - starts[0] < 0.015 and starts[4] - starts[3] > 0.02


def test_ten_percent_errors_are_counted_not_raised(maker):
    cfg = StaticConfig((4,), (8,), (4,), epochs=10, seed=1)
    with MockOpenAI(MockConfig(error_rate=0.1, seed=3)) as srv:
        rows, records = _run(srv, maker, cfg)
    row = rows[0]
    assert srv.counters.errors > 0
    assert row["failures"] == srv.counters.errors
    assert row["successes"] + row["failures"] == 40 == len(records)
    assert row["first_error"].startswith("HTTP 500")
    assert sum(not r["success"] for r in records) == srv.counters.errors


def test_mid_stream_disconnect_is_a_failure_record(maker):
    cfg = StaticConfig((2,), (8,), (8,), epochs=4, seed=2)
    with MockOpenAI(MockConfig(disconnect_rate=0.5, disconnect_after=3, seed=1)) as srv:
        rows, records = _run(srv, maker, cfg)
    cut = srv.counters.disconnects
    assert 0 < cut < 8
    assert rows[0]["failures"] == cut and rows[0]["successes"] == 8 - cut
    bad = [r for r in records if not r["success"]]
    assert len(bad) == cut and all(r["error"] for r in bad)
    # the completed ones are still measured correctly
    assert all(r["output_tokens"] == 8 for r in records if r["success"])


def test_without_usage_tokens_are_counted_from_chunks(maker):
    cfg = StaticConfig((1,), (8,), (5,), epochs=2)
    with MockOpenAI(MockConfig(send_usage=False)) as srv:
        rows, records = _run(srv, maker, cfg)
    assert rows[0]["output_tokens_source"] == "chunks"
    assert all(r["output_tokens"] == 5 and r["server_prompt_tokens"] is None for r in records)


def test_cli_waits_for_the_service_to_be_ready(tmp_path, tokenizer_dir, bench_cli, capsys):
    out = tmp_path / "o.csv"
    argv = [
        "static",
        "--endpoint",
        str(tmp_path / "endpoint.json"),
        "--tokenizer",
        str(tokenizer_dir),
        "--concurrency",
        "1",
        "--input-len",
        "8",
        "--output-len",
        "2",
        "--epochs",
        "1",
        "--output",
        str(out),
        "--records",
        str(tmp_path / "r.jsonl"),
    ]
    with MockOpenAI(MockConfig(healthy=False)) as srv:
        srv.write_endpoint(tmp_path / "endpoint.json", state="starting")
        assert bench_cli(argv + ["--ready-timeout", "0.3"]) == 2
        assert "not ready" in capsys.readouterr().err and not out.exists()
        srv.write_endpoint(tmp_path / "endpoint.json", state="ready")
        assert bench_cli(argv + ["--ready-timeout", "0.3"]) == 2  # /health still 503
        srv.config.healthy = True
        srv.write_endpoint(tmp_path / "endpoint.json", state="starting")
        timer = threading.Timer(
            0.3, srv.write_endpoint, args=(tmp_path / "endpoint.json",), kwargs={"state": "ready"}
        )
        timer.start()
        t = time.monotonic()
        assert bench_cli(argv + ["--ready-timeout", "10"]) == 0
        assert time.monotonic() - t > 0.25
    assert next(csv.DictReader(out.open()))["successes"] == "1"


def test_cli_static_end_to_end_never_leaks_the_key(
    tmp_path, tokenizer_dir, bench_cli, monkeypatch, capsys
):
    key = "sk-very-secret-key-123"
    monkeypatch.setenv("BENCH_TEST_KEY", key)
    out, rec = tmp_path / "static.csv", tmp_path / "records.jsonl"
    with MockOpenAI(MockConfig(ttft_s=0.005, itl_s=0.002, api_key=key)) as srv:
        ep = srv.write_endpoint(tmp_path / "endpoint.json")
        rc = bench_cli(
            [
                "static",
                "--endpoint",
                str(ep),
                "--tokenizer",
                str(tokenizer_dir),
                "--concurrency",
                "1,2",
                "--input-len",
                "16,32",
                "--output-len",
                "4,8",
                "--epochs",
                "2",
                "--seed",
                "0",
                "--output",
                str(out),
                "--records",
                str(rec),
                "--api-key-env",
                "BENCH_TEST_KEY",
                "--ready-timeout",
                "5",
                "--slo-ttft-ms",
                "1000",
                "--slo-tpot-ms",
                "100",
            ]
        )
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["concurrency"], r["input_len"], r["output_len"]) for r in rows] == [
        ("1", "16", "4"),
        ("2", "16", "4"),
        ("1", "32", "8"),
        ("2", "32", "8"),
    ]
    assert all(r["failures"] == "0" and r["model"] == "mock-model" for r in rows)
    assert all(float(r["slo_attainment"]) == 1.0 for r in rows)
    assert len(rec.read_text().splitlines()) == 2 * (1 + 2) * 2
    prov = tmp_path / "static.csv.provenance.json"
    assert json.loads(prov.read_text())["command"] == "bench static"
    captured = capsys.readouterr()
    for text in (
        out.read_text(),
        rec.read_text(),
        prov.read_text(),
        (tmp_path / "records.jsonl.provenance.json").read_text(),
        captured.out,
        captured.err,
    ):
        assert key not in text
    # a wrong key: every request fails, so the service gate stops the run with the server's
    # answer (never the key) and leaves the previous run's CSV as it was
    before = out.read_text()
    monkeypatch.setenv("BENCH_TEST_KEY", "wrong")
    with MockOpenAI(MockConfig(api_key=key)) as srv:
        ep = srv.write_endpoint(tmp_path / "endpoint.json")
        rc = bench_cli(
            [
                "static",
                "--endpoint",
                str(ep),
                "--tokenizer",
                str(tokenizer_dir),
                "--concurrency",
                "2",
                "--input-len",
                "8",
                "--output-len",
                "2",
                "--epochs",
                "1",
                "--output",
                str(out),
                "--records",
                str(rec),
                "--api-key-env",
                "BENCH_TEST_KEY",
            ]
        )
    assert rc == 2 and out.read_text() == before
    err = capsys.readouterr().err.strip()
    assert "2 of 2 requests failed (allowed 0)" in err and "first request error: HTTP 401" in err
    assert err.count("\n") == 0 and key not in err


def test_cli_errors_are_one_line(tmp_path, tokenizer_dir, bench_cli, capsys, monkeypatch):
    base = [
        "static",
        "--endpoint",
        str(tmp_path / "e.json"),
        "--tokenizer",
        str(tokenizer_dir),
        "--concurrency",
        "1",
        "--output",
        str(tmp_path / "o.csv"),
        "--records",
        str(tmp_path / "r.jsonl"),
    ]
    assert bench_cli(base + ["--input-len", "32,64", "--output-len", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--output-len" in err and "equally many" in err
    monkeypatch.delenv("NOPE_KEY", raising=False)
    assert (
        bench_cli(base + ["--input-len", "8", "--output-len", "2", "--api-key-env", "NOPE_KEY"])
        == 2
    )
    assert "NOPE_KEY is not set" in capsys.readouterr().err
    assert (
        bench_cli(base + ["--input-len", "8", "--output-len", "2", "--ready-timeout", "0.1"]) == 2
    )
    assert "not ready" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
