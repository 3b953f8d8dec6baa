"""Gate verdicts, the quantization-accuracy and training-loss checks, the summary table, the
root-cause line of a server log, and the wiring contract's flag rendering."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from llmbuild.errors import UserError
from llmbuild.gates import checks, report
from llmbuild.gates import verdict as V
from llmbuild.serve.rootcause import log_root_cause, root_cause
from llmbuild.wiring import cli_flags

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def _acc(path: Path, accuracy: float, n: int = 200, model: str = "m") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"accuracy": accuracy, "n": n, "model": model}))
    return path


def test_quant_gate_passes_within_the_drop_and_names_both_figures(tmp_path):
    q = _acc(tmp_path / "sft-w8a8/accuracy.json", 0.97, model="sft-w8a8")
    r = _acc(tmp_path / "sft/accuracy.json", 1.0, model="sft")
    v = checks.quant_accuracy(q, r, 0.05)
    assert v.status == "pass" and v.figure == pytest.approx(0.03) and v.threshold == 0.05
    assert "sft-w8a8 accuracy 0.9700 vs sft 1.0000" in v.detail


def test_quant_gate_trips_beyond_the_drop(tmp_path):
    q = _acc(tmp_path / "q.json", 0.80, model="sft-w8a8")
    r = _acc(tmp_path / "r.json", 1.0, model="sft")
    v = checks.quant_accuracy(q, r, 0.05)
    assert v.failed and v.figure == pytest.approx(0.2)
    with pytest.raises(UserError, match="quant_accuracy gate fail for sft-w8a8: accuracy drop 0.2"):
        V.finish(v, tmp_path / "out.json", command="t", args={})
    assert not (tmp_path / "out.json").exists()


def test_quant_gate_refuses_different_splits(tmp_path):
    q = _acc(tmp_path / "q.json", 1.0, n=100)
    r = _acc(tmp_path / "r.json", 1.0, n=200)
    with pytest.raises(UserError, match="same held-out split"):
        checks.quant_accuracy(q, r, 0.05)


def _log(path: Path, losses, steps=None) -> Path:
    steps = steps or list(range(1, len(losses) + 1))
    path.write_text(
        "".join(
            json.dumps({"step": s, "loss": x, "tokens": s * 10}) + "\n"
            for s, x in zip(steps, losses, strict=True)
        )
    )
    return path


def test_train_gate_passes_on_finite_losses(tmp_path):
    v = checks.train_loss(_log(tmp_path / "l.jsonl", [3.0, 2.0, 1.0]), 3, subject="sft")
    assert v.status == "pass" and v.figure == 1.0 and v.figures["steps"] == 3


@pytest.mark.parametrize(
    ("losses", "steps", "iters", "says"),
    [
        ([3.0, math.nan, 1.0], None, 3, "loss nan at step 2"),
        ([3.0, math.inf], None, 2, "loss inf at step 2"),
        ([3.0, 2.0], [1, 3], 3, "not consecutive"),
        ([3.0, 2.0], None, 5, "last step 2, expected 5"),
    ],
)
def test_train_gate_trips(tmp_path, losses, steps, iters, says):
    v = checks.train_loss(_log(tmp_path / "l.jsonl", losses, steps), iters)
    assert v.failed and says in v.detail


def test_verdict_json_has_no_nan_and_reads_back(tmp_path):
    v = V.Verdict("g", "s", "pass", "m", math.nan, 1.0, "d", {"x": math.inf})
    V.write(tmp_path / "v.json", v, command="t", args={})
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["figure"] is None and data["figures"]["x"] is None
    assert V.read(tmp_path / "v.json").gate == "g"
    assert (tmp_path / "v.json.provenance.json").is_file()


def test_summary_table_lists_every_verdict(tmp_path):
    paths = []
    for i, status in enumerate(["pass", "warn", "skipped"]):
        v = V.Verdict("gate", f"subject{i}", status, "metric", 0.5, 1.0, f"detail {i}")
        paths.append(V.write(tmp_path / f"{i}.json", v, command="t", args={}))
    out = report.write_summary(paths, tmp_path / "s.json", tmp_path / "s.html", started=0, args={})
    assert [v.status for v in out] == ["pass", "warn", "skipped"]
    html = (tmp_path / "s.html").read_text()
    assert html.count("<tr>") == 4 and "1 warnings" in html and "detail 2" in html


def test_gate_cli_exits_2_with_one_line_and_no_output(tmp_path):
    q = _acc(tmp_path / "q.json", 0.5)
    r = _acc(tmp_path / "r.json", 1.0)
    cmd = [sys.executable, "-m", "llmbuild", "gates", "quantize", "--input", str(q)]
    cmd += ["--reference", str(r), "--output", str(tmp_path / "v.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and "accuracy drop 0.5 (threshold 0.05)" in errors[0]
    assert not (tmp_path / "v.json").exists()


VLLM_LOG = """INFO 12-01 api_server.py] vLLM API server version 0.32.0
(EngineCore_DP0 pid=9) ERROR 12-01 [core.py:1512] EngineCore encountered a fatal error.
(EngineCore_DP0 pid=9) ERROR 12-01 [core.py:1512] Traceback (most recent call last):
(EngineCore_DP0 pid=9) ERROR 12-01 [core.py:1512]   File "core.py", line 3, in run
(EngineCore_DP0 pid=9) ERROR 12-01 [core.py:1512] RuntimeError: int8_scaled_mm_with_quant: \
expect A to be bfloat16 or half
ERROR 12-01 [serving.py:1] vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered \
an issue. See stack trace (above) for the root cause.
INFO: 127.0.0.1:5 - "POST /v1/chat/completions HTTP/1.1" 500 Internal Server Error
"""


def test_root_cause_skips_wrappers_and_log_prefixes(tmp_path):
    want = "RuntimeError: int8_scaled_mm_with_quant: expect A to be bfloat16 or half"
    assert root_cause(VLLM_LOG.splitlines()) == want
    (tmp_path / "serve.log").write_text(VLLM_LOG)
    assert log_root_cause(tmp_path / "serve.log") == want
    assert log_root_cause(tmp_path / "missing.log") is None
    assert log_root_cause(None) is None


def test_root_cause_without_an_exception():
    assert root_cause(["[serve] vLLM server exited by itself with code -9"]).endswith("code -9")
    assert root_cause(["INFO all fine"]) is None
    assert root_cause(["EngineDeadError: dead"]) == "EngineDeadError: dead"


def test_cli_flags_say_every_value_explicitly():
    section = {"a_b": True, "c": False, "d": None, "e": [1, 2], "f": "x y", "g": 0}
    got = cli_flags(section, ["a_b", "c", "d", "e", "f", "g"], {"g": "h_i"})
    assert got == "--a-b --no-c --e 1,2 --f 'x y' --h-i 0"
