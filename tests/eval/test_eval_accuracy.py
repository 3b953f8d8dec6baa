from __future__ import annotations

import json

import pytest

from llmbuild.errors import UserError
from llmbuild.eval.accuracy import Answer, Example, is_correct, load_alpaca, score

pytestmark = pytest.mark.unit


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_prompt_joins_input_with_newline():
    assert Example(1, "Uppercase:", "abc", "ABC").prompt == "Uppercase:\nabc"
    assert Example(1, "Say hi.", "", "hi").prompt == "Say hi."


def test_exact_match_after_strip():
    assert is_correct("  ABC\n", "ABC")
    assert not is_correct("ABC.", "ABC")
    assert not is_correct("abc", "ABC")


@pytest.mark.parametrize(
    "bad,message",
    [
        ('{"instruction": "x", "output": "y"', ":2: not valid JSON"),
        ('["x"]', ":2: expected a JSON object, got list"),
        ('{"instruction": "x"}', ":2: output: missing"),
        ('{"instruction": "x", "input": 3, "output": "y"}', ":2: input: must be a string"),
        ('{"instruction": 1, "output": "y"}', ":2: instruction: must be a str"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    p = write_jsonl(
        tmp_path / "heldout.jsonl", [{"instruction": "a", "input": "", "output": "b"}, bad]
    )
    with pytest.raises(UserError) as ei:
        load_alpaca(p)
    text = str(ei.value)
    assert str(p) in text and message in text and "\n" not in text


def test_blank_lines_skipped_and_empty_file_rejected(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"instruction": "a", "output": "b"},
            "",
            {"instruction": "c", "input": None, "output": "d"},
        ],
    )
    exs = load_alpaca(p)
    assert [(e.line, e.prompt, e.output) for e in exs] == [(1, "a", "b"), (3, "c", "d")]
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no records"):
        load_alpaca(tmp_path / "e.jsonl")


def test_score_counts_failures_as_wrong():
    exs = [Example(i + 1, "q", "", out) for i, out in enumerate(["A", "B", "C", "D"])]
    answers = [
        Answer(" A ", True),
        Answer("b", True),
        Answer("", False, "HTTP 500: x"),
        Answer("D", True),
    ]
    res, recs = score(exs, answers, "m")
    assert res.as_dict() == {
        "accuracy": 0.5,
        "n": 4,
        "correct": 2,
        "failed_requests": 1,
        "model": "m",
    }
    assert [r["correct"] for r in recs] == [True, False, False, True]
    assert recs[2]["error"] == "HTTP 500: x" and recs[0]["line"] == 1


def test_eval_against_mock_service(tmp_path, eval_cli, capsys):
    pytest.importorskip("aiohttp")
    from mock_openai import MockConfig, MockOpenAI

    rows = [
        {"instruction": "Uppercase the word.", "input": w, "output": w.upper()}
        for w in ("cat", "dog", "bird", "fish", "cow", "ant")
    ]
    data = write_jsonl(tmp_path / "heldout.jsonl", rows)

    def answer(prompt: str) -> str:  # right for all but "cow", with stray whitespace
        word = prompt.split("\n")[1]
        return f" {word.upper()}\n" if word != "cow" else "COW!"

    out, rec = tmp_path / "accuracy.json", tmp_path / "answers.jsonl"
    with MockOpenAI(MockConfig(chat_answer=answer)) as srv:
        ep = srv.write_endpoint(tmp_path / "endpoint.json")
        rc = eval_cli(
            [
                "accuracy",
                "--endpoint",
                str(ep),
                "--input",
                str(data),
                "--output",
                str(out),
                "--records",
                str(rec),
                "--max-tokens",
                "8",
                "--concurrency",
                "3",
                "--ready-timeout",
                "5",
            ]
        )
        bodies = srv.counters.bodies
    assert rc == 0
    result = json.loads(out.read_text())
    assert result == {
        "accuracy": pytest.approx(5 / 6),
        "n": 6,
        "correct": 5,
        "failed_requests": 0,
        "model": "mock-model",
        "served_dtype": None,  # the endpoint file names no dtype (a vLLM service's does)
    }
    assert all(b["temperature"] == 0 and b["max_tokens"] == 8 for b in bodies)
    assert bodies[0]["messages"] == [{"role": "user", "content": "Uppercase the word.\ncat"}]
    lines = [json.loads(x) for x in rec.read_text().splitlines()]
    assert [x["expected"] for x in lines] == [r["output"] for r in rows]  # input order
    assert (tmp_path / "accuracy.json.provenance.json").exists()
    assert "accuracy 0.8333 (5/6)" in capsys.readouterr().out


def test_eval_counts_failed_requests(tmp_path, eval_cli):
    pytest.importorskip("aiohttp")
    from mock_openai import MockConfig, MockOpenAI

    data = write_jsonl(
        tmp_path / "d.jsonl",
        [{"instruction": f"q{i}", "input": "", "output": "42"} for i in range(20)],
    )
    out = tmp_path / "r.json"
    with MockOpenAI(MockConfig(chat_answer="42", error_rate=0.25, seed=4)) as srv:
        ep = srv.write_endpoint(tmp_path / "endpoint.json")
        rc = eval_cli(
            [
                "accuracy",
                "--endpoint",
                str(ep),
                "--input",
                str(data),
                "--output",
                str(out),
                "--records",
                str(tmp_path / "a.jsonl"),
                "--concurrency",
                "4",
                "--max-failed-fraction",
                "0.5",  # a few failures tolerated: counted, not fatal (see test_eval_gate.py)
            ]
        )
        errors = srv.counters.errors
    assert rc == 0 and 0 < errors <= 10
    result = json.loads(out.read_text())
    assert result["failed_requests"] == errors
    assert result["correct"] == 20 - errors and result["n"] == 20


def test_eval_malformed_data_is_one_line_error(tmp_path, eval_cli, capsys):
    data = write_jsonl(tmp_path / "heldout.jsonl", [{"instruction": "a", "output": "b"}, "{oops"])
    rc = eval_cli(
        [
            "accuracy",
            "--endpoint",
            str(tmp_path / "none.json"),
            "--input",
            str(data),
            "--output",
            str(tmp_path / "r.json"),
            "--records",
            str(tmp_path / "a.jsonl"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmbuild eval accuracy: error: ")
    assert f"{data}:2: not valid JSON" in err and "\n" not in err
    assert not (tmp_path / "r.json").exists()


def test_cli_defaults_are_the_schemas():
    import argparse

    from llmbuild.eval import cli
    from llmbuild.schema import default

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(
        ["accuracy", "--input", "h", "--endpoint", "e", "--output", "o", "--records", "r"]
    )
    assert (args.max_tokens, args.concurrency) == (
        default("eval.max_tokens"),
        default("eval.concurrency"),
    )
    assert args.max_failed_fraction == default("gates.max_failed_fraction")
    assert args.ready_timeout == default("serve.ready_timeout")
