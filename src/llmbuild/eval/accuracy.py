"""Exact-match accuracy on Alpaca records through /v1/chat/completions.

The prompt is ``instruction`` plus ``"\\n" + input`` when input is non-empty, sent as one user
message (the server applies the model's chat template) with temperature 0. An answer is correct
when it equals the expected ``output`` after stripping whitespace at both ends. A failed request
counts as wrong and is also counted in ``failed_requests``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError

FIELDS = ("instruction", "input", "output")


@dataclass(frozen=True)
class Example:
    line: int  # 1-based line number in the data file
    instruction: str
    input: str
    output: str

    @property
    def prompt(self) -> str:
        return self.instruction + ("\n" + self.input if self.input else "")


def parse_alpaca_line(text: str, path: str | Path, line: int) -> Example:
    where = f"line {line}"
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"not valid JSON ({exc.msg}); each line must be one Alpaca record "
            '{"instruction", "input", "output"}',
            path=path,
            field=where,
        ) from None
    if not isinstance(rec, dict):
        raise UserError(f"expected a JSON object, got {type(rec).__name__}", path=path, field=where)
    for key in ("instruction", "output"):
        if key not in rec:
            raise UserError(
                f"missing {key!r}; Alpaca records need instruction, input, output",
                path=path,
                field=where,
            )
    values = {k: rec.get(k, "") for k in FIELDS}
    values["input"] = values["input"] if values["input"] is not None else ""
    for k, v in values.items():
        if not isinstance(v, str):
            raise UserError(
                f"{k!r} must be a string, got {type(v).__name__}", path=path, field=where
            )
    return Example(line=line, **values)


def load_alpaca(path: str | Path) -> list[Example]:
    """Alpaca JSONL records; a malformed line is a UserError naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise UserError("data file not found", path=p)
    examples = []
    with p.open(encoding="utf-8") as fh:
        for n, text in enumerate(fh, start=1):
            if text.strip():
                examples.append(parse_alpaca_line(text, p, n))
    if not examples:
        raise UserError("no records; expected one Alpaca JSON object per line", path=p)
    return examples


def is_correct(answer: str, expected: str) -> bool:
    return answer.strip() == expected.strip()


@dataclass(frozen=True)
class Answer:
    """What the service said for one example (a ChatResult, minus the transport)."""

    text: str
    success: bool
    error: str = ""
    latency: float = 0.0


@dataclass(frozen=True)
class AccuracyResult:
    accuracy: float
    n: int
    correct: int
    failed_requests: int
    model: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(
    examples: Sequence[Example], answers: Sequence[Answer], model: str
) -> tuple[AccuracyResult, list[dict[str, Any]]]:
    """Pure: the result and one record per example."""
    if len(examples) != len(answers):
        raise ValueError("one answer per example")
    records = []
    correct = failed = 0
    for ex, ans in zip(examples, answers, strict=True):
        ok = ans.success and is_correct(ans.text, ex.output)
        correct += ok
        failed += not ans.success
        records.append(
            {
                "line": ex.line,
                "prompt": ex.prompt,
                "expected": ex.output,
                "answer": ans.text,
                "correct": ok,
                "success": ans.success,
                "error": ans.error,
                "latency": ans.latency,
            }
        )
    n = len(examples)
    return AccuracyResult(
        accuracy=correct / n if n else float("nan"),
        n=n,
        correct=correct,
        failed_requests=failed,
        model=model,
    ), records


def ask_all(
    endpoint: Any,
    examples: Sequence[Example],
    max_tokens: int,
    concurrency: int,
    timeout_s: float = 600.0,
    on_done: Callable[[int], None] | None = None,
) -> list[Answer]:
    """Every example's answer from ``endpoint`` (a bench.client.Endpoint), in order."""
    import asyncio

    from llmbuild.bench.client import chat_completion, make_session, run_concurrent

    async def run() -> list[Answer]:
        async with make_session(concurrency, timeout_s) as session:

            async def one(ex: Example) -> Answer:
                r = await chat_completion(
                    session,
                    endpoint,
                    [{"role": "user", "content": ex.prompt}],
                    max_tokens=max_tokens,
                    temperature=0.0,
                )
                return Answer(text=r.text, success=r.success, error=r.error, latency=r.latency)

            return await run_concurrent(examples, concurrency, one, on_done)

    return asyncio.run(run())
