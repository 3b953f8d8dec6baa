"""The benchmark's gates: a dead service, failed requests, rows that measured the client."""

from __future__ import annotations

import csv
import json
import math
import time

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("numpy")
pytest.importorskip("tokenizers")

from mock_openai import CRASH_CAUSE, MockConfig, MockOpenAI, MockProcess, write_crash_log  # noqa: E402

from llmbuild.bench.datasets import LengthDist, generate, write_jsonl  # noqa: E402
from llmbuild.bench.gate import Staged  # noqa: E402
from llmbuild.bench.metrics import (  # noqa: E402
    GATE_COLUMNS,
    VALIDITY_COLUMNS,
    Limits,
    invalid_reasons,
    mark_validity,
)
from llmbuild.bench.prompts import PromptMaker, load_tokenizer  # noqa: E402
from llmbuild.errors import UserError  # noqa: E402
from llmbuild.serve.counters import COLUMNS as SERVER_COLUMNS  # noqa: E402

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def dataset(tokenizer_dir, tmp_path_factory):
    maker = PromptMaker(load_tokenizer(tokenizer_dir))
    entries = generate(
        maker, 60, LengthDist(8, 24, 16, 4), LengthDist(8, 8, 8, 0, "output"), seed=0
    )
    path = tmp_path_factory.mktemp("ds") / "gen.jsonl"
    with path.open("w") as fh:
        write_jsonl(entries, fh)
    return path


def _argv(kind, tokenizer_dir, dataset, out_dir, *extra):
    if kind == "static":
        argv = ["static", "--concurrency", "4", "--input-len", "8", "--output-len", "8"]
        argv += ["--epochs", "3"]
    else:
        argv = ["dynamic", "--data", str(dataset), "--request-rate", "100"]
        argv += ["--num-prompts", "20"]
    argv += ["--tokenizer", str(tokenizer_dir), "--ready-timeout", "10"]
    argv += ["--output", str(out_dir / f"{kind}.csv"), "--records", str(out_dir / f"{kind}.jsonl")]
    return argv + [str(x) for x in extra]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def _kill_on_first_answer(monkeypatch, srv, log):
    """The server dies (SIGKILL) as the first answer arrives, the others still in flight."""
    from llmbuild.progress import RateLog

    update = RateLog.update

    def dying(self, done, extra=""):
        if srv.proc.poll() is None:
            write_crash_log(log)
            srv.kill()
        update(self, done, extra)

    monkeypatch.setattr(RateLog, "update", dying)


# --- (a) the service dies mid-run ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_dead_service_fails_with_its_root_cause_and_writes_nothing(
    kind, tmp_path, tokenizer_dir, dataset, bench_cli, capsys, monkeypatch
):
    out_dir, keep = tmp_path / "out", tmp_path / "keep"
    out_dir.mkdir()
    log, ep = tmp_path / "serve.log", tmp_path / "endpoint.json"
    log.write_text("INFO starting\n")
    with MockProcess(ep, model="w8a8", ttft_s=0.05, itl_s=0.01, log=log) as srv:
        _kill_on_first_answer(monkeypatch, srv, log)
        argv = _argv(kind, tokenizer_dir, dataset, out_dir, "--endpoint", ep)
        rc = bench_cli(
            argv + ["--keep-on-failure", str(keep), "--verdict", str(out_dir / "v.json")]
        )
        pid = srv.pid
    assert rc == 2
    err = _one_line(capsys)
    n = 12 if kind == "static" else 20
    assert err.startswith(
        f"llmbuild bench {kind}: error: w8a8: service gate failed in bench {kind}"
    )
    assert f"of {n} requests failed (allowed 0)" in err
    assert f"service process {pid} is gone" in err
    assert f"root cause (server log): {CRASH_CAUSE}" in err and "EngineDeadError" not in err
    assert f"server log {log.resolve()}" in err
    # nothing that looks finished: no CSV, records, verdict, provenance or temporary files
    assert list(out_dir.iterdir()) == []
    # the records (and the would-be CSV and the failed verdict) are kept for diagnosis
    kept = {p.name for p in keep.iterdir()}
    assert kept == {f"{kind}.csv", f"{kind}.jsonl", f"{kind}.verdict.json"}
    assert f"kept for diagnosis: {(keep / f'{kind}.jsonl').resolve()}" in err
    records = [json.loads(x) for x in (keep / f"{kind}.jsonl").read_text().splitlines()]
    assert len(records) == n and 1 <= sum(r["success"] for r in records) < n
    verdict = json.loads((keep / f"{kind}.verdict.json").read_text())
    assert verdict["gate"] == "service_requests" and verdict["status"] == "fail"
    assert verdict["subject"] == "w8a8" and verdict["figures"]["service_alive"] is False


def test_without_a_keep_dir_the_line_says_nothing_was_kept(
    tmp_path, tokenizer_dir, dataset, bench_cli, capsys, monkeypatch
):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ep = tmp_path / "endpoint.json"
    with MockProcess(ep, ttft_s=0.05) as srv:  # no log in the endpoint file
        _kill_on_first_answer(monkeypatch, srv, tmp_path / "unused.log")
        rc = bench_cli(_argv("static", tokenizer_dir, dataset, out_dir, "--endpoint", ep))
    assert rc == 2
    err = _one_line(capsys)
    assert "mock-model: service gate failed" in err and "first request error: " in err
    assert "no server log in the endpoint file" in err and "nothing kept" in err
    assert list(out_dir.iterdir()) == []


# --- (b) a healthy run, (c) failures within the allowed fraction ---------------------------


def test_healthy_run_passes_and_writes_the_verdict(tmp_path, tokenizer_dir, dataset, bench_cli):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with MockOpenAI(MockConfig(ttft_s=0.005, itl_s=0.001)) as srv:
        ep = srv.write_endpoint(tmp_path / "endpoint.json")
        argv = _argv("static", tokenizer_dir, dataset, out_dir, "--endpoint", ep)
        assert bench_cli(argv + ["--verdict", str(out_dir / "v.json")]) == 0
    rows = list(csv.DictReader((out_dir / "static.csv").open()))
    header = list(rows[0])
    assert tuple(header[-len(GATE_COLUMNS) :]) == GATE_COLUMNS
    # the validity columns, then the server's counters (none from the mock), then the verdict
    at = header.index(VALIDITY_COLUMNS[0])
    assert tuple(header[at : at + len(VALIDITY_COLUMNS)]) == VALIDITY_COLUMNS
    after = header[at + len(VALIDITY_COLUMNS) : -len(GATE_COLUMNS)]
    assert tuple(after) == SERVER_COLUMNS
    assert rows[0]["valid"] == "True" and rows[0]["invalid_reason"] == ""
    v = json.loads((out_dir / "v.json").read_text())
    assert (v["gate"], v["subject"], v["status"]) == ("bench_validity", "mock-model static", "pass")
    assert (v["metric"], v["figure"], v["threshold"]) == ("invalid rows", 0, 0)
    assert v["figures"]["requests_sent"] == 12 and v["figures"]["failed_requests"] == 0
    assert v["figures"]["worst_rate_fraction"] is None  # static: no target rate
    prov = json.loads((out_dir / "v.json.provenance.json").read_text())
    assert prov["command"] == "bench static"


def test_failures_within_the_allowed_fraction_pass(
    tmp_path, tokenizer_dir, dataset, bench_cli, capsys
):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with MockOpenAI(MockConfig(error_rate=0.1, seed=3)) as srv:
        ep = srv.write_endpoint(tmp_path / "endpoint.json")
        argv = _argv("static", tokenizer_dir, dataset, out_dir, "--endpoint", ep)
        assert bench_cli(argv) == 2  # default: no failure allowed
        err = _one_line(capsys)
        failed = srv.counters.errors
        assert 0 < failed < 6
        assert f"mock-model: service gate failed in bench static: {failed} of 12 requests" in err
        assert 'first request error: HTTP 500: {"error": {"message": "mock failure"}}' in err
        assert list(out_dir.iterdir()) == []
        argv += ["--max-failed-fraction", "0.5", "--verdict", str(out_dir / "v.json")]
        assert bench_cli(argv) == 0
    row = next(csv.DictReader((out_dir / "static.csv").open()))
    assert 0 < int(row["failures"]) <= 6 and row["valid"] == "True"
    v = json.loads((out_dir / "v.json").read_text())
    assert v["status"] == "pass" and v["figures"]["max_failed_fraction"] == 0.5
    assert v["figures"]["failed_requests"] == int(row["failures"])


# --- (d) a client that falls behind its schedule ------------------------------------------


@pytest.fixture
def slow_client(monkeypatch):
    """Every request costs the client 20 ms of blocked event loop before it is sent: at
    200 req/s (one every 5 ms) it falls further and further behind its schedule."""
    from llmbuild.bench import client

    send = client.Request.send

    def slow(self, *args, **kwargs):
        time.sleep(0.02)
        return send(self, *args, **kwargs)

    monkeypatch.setattr(client.Request, "send", slow)


def _dynamic_slow(tokenizer_dir, dataset, out_dir, ep, *extra):
    argv = ["dynamic", "--endpoint", str(ep), "--tokenizer", str(tokenizer_dir)]
    argv += ["--data", str(dataset), "--request-rate", "200,inf", "--num-prompts", "30"]
    argv += ["--output", str(out_dir / "d.csv"), "--records", str(out_dir / "d.jsonl")]
    return argv + [str(x) for x in extra]


def test_a_client_that_falls_behind_fails_the_validity_gate(
    tmp_path, tokenizer_dir, dataset, bench_cli, capsys, slow_client
):
    out_dir, keep = tmp_path / "out", tmp_path / "keep"
    out_dir.mkdir()
    with MockOpenAI(MockConfig()) as srv:
        ep = srv.write_endpoint(tmp_path / "endpoint.json")
        argv = _dynamic_slow(tokenizer_dir, dataset, out_dir, ep, "--keep-on-failure", keep)
        argv += ["--min-rate-fraction", "0.95", "--max-lag-ms", "100"]
        assert bench_cli(argv + ["--verdict", str(out_dir / "v.json")]) == 2
    err = _one_line(capsys)
    assert "error: mock-model dynamic: benchmark invalid: " in err
    assert "rate 200 req/s: achieved " in err and " of target 200 req/s (< 0.95 x target)" in err
    assert "client lag p99 " in err and " ms > 100 ms" in err
    assert list(out_dir.iterdir()) == []
    assert {p.name for p in keep.iterdir()} == {"d.csv", "d.jsonl", "d.verdict.json"}
    rows = list(csv.DictReader((keep / "d.csv").open()))
    assert rows[0]["valid"] == "False" and float(rows[0]["achieved_request_rate"]) < 100
    assert json.loads((keep / "d.verdict.json").read_text())["status"] == "fail"


def test_warn_mode_writes_invalid_rows_marked_and_a_warn_verdict(
    tmp_path, tokenizer_dir, dataset, bench_cli, capsys, slow_client
):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with MockOpenAI(MockConfig()) as srv:
        ep = srv.write_endpoint(tmp_path / "endpoint.json")
        argv = _dynamic_slow(tokenizer_dir, dataset, out_dir, ep, "--gate-mode", "warn")
        assert bench_cli(argv + ["--verdict", str(out_dir / "v.json")]) == 0
    rows = list(csv.DictReader((out_dir / "d.csv").open()))
    assert [r["valid"] for r in rows] == ["False", "False"]
    assert "of target 200 req/s" in rows[0]["invalid_reason"]
    # rate inf: no achieved-rate test, but the lag still is one
    assert "of target" not in rows[1]["invalid_reason"]
    assert "client lag p99" in rows[1]["invalid_reason"]
    v = json.loads((out_dir / "v.json").read_text())
    assert (v["gate"], v["subject"], v["status"]) == (
        "bench_validity",
        "mock-model dynamic",
        "warn",
    )
    assert v["figure"] == 2 and v["figures"]["worst_rate_fraction"] < 0.5
    assert v["figures"]["worst_p99_sched_lag_ms"] > 100
    assert "2 row(s) marked invalid" in capsys.readouterr().out


# --- the pieces -----------------------------------------------------------------------------


def _row(**kw):
    row = {
        "target_request_rate": math.nan,
        "achieved_request_rate": 10.0,
        "p99_sched_lag_ms": 1.0,
        "successes": 10,
        "failures": 0,
    }
    return {**row, **kw}


def test_row_validity_reasons():
    lim = Limits(min_rate_fraction=0.95, max_lag_ms=100, max_failed_fraction=0)
    assert invalid_reasons(_row(), lim) == []  # static: no target rate
    assert invalid_reasons(_row(target_request_rate=10.2, achieved_request_rate=9.7), lim) == []
    assert invalid_reasons(_row(target_request_rate=10.0, achieved_request_rate=9.4), lim) == [
        "achieved 9.4 of target 10 req/s (< 0.95 x target)"
    ]
    assert invalid_reasons(_row(target_request_rate=math.inf, achieved_request_rate=3.0), lim) == []
    assert invalid_reasons(_row(p99_sched_lag_ms=math.nan), lim) == []  # no requests
    assert invalid_reasons(_row(p99_sched_lag_ms=100.5), lim) == [
        "client lag p99 100.50 ms > 100 ms"
    ]
    assert invalid_reasons(_row(successes=9, failures=1), lim) == [
        "1 of 10 requests failed (allowed 0)"
    ]
    assert invalid_reasons(_row(successes=9, failures=1), Limits(max_failed_fraction=0.1)) == []
    rows = mark_validity(
        [_row(), _row(p99_sched_lag_ms=300.0, target_request_rate=20.0)], Limits(max_lag_ms=50)
    )
    assert [r["valid"] for r in rows] == [True, False]
    assert rows[1]["invalid_reason"] == (
        "achieved 10 of target 20 req/s (< 0.95 x target); client lag p99 300.00 ms > 50 ms"
    )
    assert list(rows[1])[-2:] == list(GATE_COLUMNS)


@pytest.mark.parametrize(
    "kw,flag",
    [
        ({"min_rate_fraction": 1.5}, "--min-rate-fraction"),
        ({"max_lag_ms": -1}, "--max-lag-ms"),
        ({"max_failed_fraction": -0.1}, "--max-failed-fraction"),
        ({"max_failed_fraction": math.nan}, "--max-failed-fraction"),
    ],
)
def test_limits_reject_bad_values(kw, flag):
    with pytest.raises(UserError, match=flag):
        Limits(**kw)


def test_limits_defaults_are_the_schemas():
    from llmbuild.schema import default

    lim = Limits()
    for key in ("min_rate_fraction", "max_lag_ms", "max_failed_fraction"):
        assert getattr(lim, key) == default(f"gates.{key}")


def test_bad_gate_flags_fail_before_anything_runs(
    tmp_path, tokenizer_dir, dataset, bench_cli, capsys
):
    base = _argv("static", tokenizer_dir, dataset, tmp_path, "--base-url", "http://127.0.0.1:9/v1")
    base += ["--model", "m"]
    assert bench_cli(base + ["--max-failed-fraction", "2"]) == 2
    assert "--max-failed-fraction: must be in [0, 1]" in _one_line(capsys)
    (tmp_path / "file").write_text("")
    assert bench_cli(base + ["--keep-on-failure", str(tmp_path / "file")]) == 2
    assert "--keep-on-failure: exists and is not a directory" in _one_line(capsys)


def test_speculative_is_a_boolean_option(tmp_path, tokenizer_dir, dataset):
    import argparse

    from llmbuild.bench import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="verb"))
    base = _argv("static", tokenizer_dir, dataset, tmp_path, "--base-url", "http://h:1/v1")
    assert parser.parse_args(base).speculative is False
    assert parser.parse_args(base + ["--speculative"]).speculative is True
    assert parser.parse_args(base + ["--speculative", "--no-speculative"]).speculative is False


def test_staged_files_appear_only_when_published(tmp_path):
    a, b = tmp_path / "o" / "a.csv", tmp_path / "o" / "b.jsonl"
    with pytest.raises(RuntimeError), Staged() as st:
        with st.open(a) as fh:
            fh.write("x")
        raise RuntimeError("killed mid-run")
    assert list((tmp_path / "o").iterdir()) == []
    with Staged() as st:
        st.write_text(a, "a")
        st.write_text(b, "b")
        assert sorted(p.name.startswith(".") for p in a.parent.iterdir()) == [True, True]
        kept = st.keep(tmp_path / "keep")
    assert [p.name for p in kept] == ["a.csv", "b.jsonl"] and (
        tmp_path / "keep/a.csv"
    ).read_text() == "a"
    assert list(a.parent.iterdir()) == []
    with Staged() as st:
        st.write_text(a, "A")
        st.publish()
    assert a.read_text() == "A" and oct(a.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in a.parent.iterdir()] == ["a.csv"]
