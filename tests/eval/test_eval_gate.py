"""`llmbuild eval accuracy` as a gate on its service: a dead service leaves no result."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("aiohttp")

from mock_openai import CRASH_CAUSE, MockConfig, MockOpenAI, MockProcess, write_crash_log  # noqa: E402

pytestmark = pytest.mark.unit


def _data(path, n):
    rows = [{"instruction": f"q{i}", "input": "", "output": "42"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _argv(ep, data, out_dir, *extra):
    argv = ["accuracy", "--endpoint", str(ep), "--input", str(data), "--ready-timeout", "10"]
    argv += ["--output", str(out_dir / "accuracy.json"), "--records", str(out_dir / "rec.jsonl")]
    return argv + [str(x) for x in extra]


def test_dead_service_fails_with_its_root_cause_and_writes_nothing(
    tmp_path, eval_cli, capsys, monkeypatch
):
    from llmbuild.progress import RateLog

    out_dir, keep = tmp_path / "out", tmp_path / "keep"
    out_dir.mkdir()
    data = _data(tmp_path / "heldout.jsonl", 12)
    log, ep = tmp_path / "serve.log", tmp_path / "endpoint.json"
    log.write_text("INFO starting\n")
    with MockProcess(ep, model="w8a8", ttft_s=0.1, log=log) as srv:
        update = RateLog.update

        def dying(self, done, extra=""):  # the server dies as the first answer arrives
            if srv.proc.poll() is None:
                write_crash_log(log)
                srv.kill()
            update(self, done, extra)

        monkeypatch.setattr(RateLog, "update", dying)
        argv = _argv(ep, data, out_dir, "--concurrency", "3", "--keep-on-failure", keep)
        rc = eval_cli(argv + ["--verdict", str(out_dir / "verdict.json")])
        pid = srv.pid
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("llmbuild eval accuracy: error: w8a8: service gate failed in eval")
    assert "of 12 requests failed (allowed 0)" in err and f"service process {pid} is gone" in err
    assert f"root cause (server log): {CRASH_CAUSE}" in err and "EngineDeadError" not in err
    assert f"server log {log.resolve()}" in err
    assert f"kept for diagnosis: {(keep / 'rec.jsonl').resolve()}" in err
    assert list(out_dir.iterdir()) == []  # no accuracy.json, records, verdict or provenance
    assert {p.name for p in keep.iterdir()} == {
        "rec.jsonl",
        "accuracy.json",
        "accuracy.verdict.json",
    }
    records = [json.loads(x) for x in (keep / "rec.jsonl").read_text().splitlines()]
    assert len(records) == 12 and 1 <= sum(r["success"] for r in records) < 12
    would_be = json.loads((keep / "accuracy.json").read_text())
    assert would_be["failed_requests"] == 12 - sum(r["success"] for r in records)


def test_stopped_endpoint_fails_even_without_failed_requests(
    tmp_path, eval_cli, capsys, monkeypatch
):
    from llmbuild.progress import RateLog

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    data = _data(tmp_path / "d.jsonl", 3)
    with MockOpenAI(MockConfig()) as srv:
        ep = srv.write_endpoint(tmp_path / "endpoint.json")
        close = RateLog.close

        def stopping(self):  # the service stops itself right after the last answer
            srv.write_endpoint(ep, state="stopped")
            close(self)

        monkeypatch.setattr(RateLog, "close", stopping)
        rc = eval_cli(_argv(ep, data, out_dir))
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "0 of 3 requests failed (allowed 0), the endpoint file says stopped" in err
    assert list(out_dir.iterdir()) == []


def test_healthy_run_writes_the_verdict_with_figure_0(tmp_path, eval_cli):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    data = _data(tmp_path / "d.jsonl", 5)
    with MockOpenAI(MockConfig(chat_answer="42")) as srv:
        ep = srv.write_endpoint(tmp_path / "endpoint.json")
        rc = eval_cli(_argv(ep, data, out_dir, "--verdict", out_dir / "verdict.json"))
    assert rc == 0
    assert json.loads((out_dir / "accuracy.json").read_text())["accuracy"] == 1.0
    v = json.loads((out_dir / "verdict.json").read_text())
    assert (v["gate"], v["subject"], v["status"]) == ("service_requests", "mock-model", "pass")
    assert (v["metric"], v["figure"], v["threshold"]) == ("failed fraction", 0.0, 0.0)
    assert v["figures"]["sent"] == 5 and v["figures"]["service_alive"] is True
    prov = json.loads((out_dir / "verdict.json.provenance.json").read_text())
    assert prov["command"] == "eval accuracy"


def test_failures_within_the_allowed_fraction_pass(tmp_path, eval_cli, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    data = _data(tmp_path / "d.jsonl", 20)
    with MockOpenAI(MockConfig(chat_answer="42", error_rate=0.2, seed=1)) as srv:
        ep = srv.write_endpoint(tmp_path / "endpoint.json")
        assert eval_cli(_argv(ep, data, out_dir)) == 2
        err = capsys.readouterr().err.strip()
        assert 'first request error: HTTP 500: {"error": {"message": "mock failure"}}' in err
        assert "nothing kept (add --keep-on-failure DIR" in err
        assert list(out_dir.iterdir()) == []
        first = srv.counters.errors
        assert 0 < first <= 10
        argv = _argv(ep, data, out_dir, "--max-failed-fraction", "0.5", "--verdict", out_dir / "v")
        assert eval_cli(argv) == 0
        failed = srv.counters.errors - first
    result = json.loads((out_dir / "accuracy.json").read_text())
    assert result["failed_requests"] == failed and result["correct"] == 20 - failed
    v = json.loads((out_dir / "v").read_text())
    assert v["status"] == "pass" and v["figure"] == pytest.approx(failed / 20)


def test_bad_gate_flags_are_one_line(tmp_path, eval_cli, capsys):
    data = _data(tmp_path / "d.jsonl", 1)
    assert (
        eval_cli(_argv(tmp_path / "none.json", data, tmp_path, "--max-failed-fraction", "-1")) == 2
    )
    assert "--max-failed-fraction: must be in [0, 1]" in capsys.readouterr().err
