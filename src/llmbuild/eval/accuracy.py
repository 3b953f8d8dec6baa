"""Exact-match accuracy on Alpaca records through /v1/chat/completions.

The records are read as training reads them (``llmbuild.data.formats``: the same checks, the
same prompt, ``instruction`` plus ``"\\n" + input`` when input is non-empty), sent as one user
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

from llmbuild.data.formats import alpaca_messages, alpaca_prompt
from llmbuild.errors import UserError


@dataclass(frozen=True)
class Example:
    line: int  # 1-based line number in the data file
    instruction: str
    input: str
    output: str

    @property
    def prompt(self) -> str:
        return alpaca_prompt({"instruction": self.instruction, "input": self.input})


def parse_alpaca_line(text: str, path: str | Path, line: int) -> Example:
    """One JSONL line, checked as the training data is (``llmbuild.data.formats``)."""
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"not valid JSON ({exc.msg}); each line must be one Alpaca record "
            '{"instruction", "input", "output"}',
            path=f"{path}:{line}",
        ) from None
    alpaca_messages(rec, Path(path), str(line))  # the record's shape, one-line errors
    return Example(line, rec["instruction"], rec.get("input") or "", rec["output"])


def load_alpaca(path: str | Path) -> list[Example]:
    """Alpaca JSONL records; a malformed line is a UserError naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise UserError("data file not found", path=p, field="--input")
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
