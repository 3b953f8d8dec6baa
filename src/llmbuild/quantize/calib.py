"""Calibration records from JSONL: Alpaca {"instruction", "input", "output"} or {"text"}."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llmbuild.data.formats import alpaca_prompt
from llmbuild.errors import UserError


@dataclass(frozen=True)
class Record:
    """A text record, or a chat exchange (user prompt, assistant answer)."""

    text: str | None = None
    prompt: str | None = None
    answer: str | None = None

    @property
    def is_chat(self) -> bool:
        return self.prompt is not None


def parse_line(obj: object, *, where: str) -> Record:
    """One JSON value to a Record; ``where`` is ``file:line`` for the error message."""
    if not isinstance(obj, dict):
        raise UserError(f"expected a JSON object, got {type(obj).__name__}", path=where)
    if "text" in obj:
        text = obj["text"]
        if not isinstance(text, str) or not text.strip():
            raise UserError("must be a non-empty string", path=where, field="text")
        return Record(text=text)
    if "instruction" in obj:
        fields = {}
        for key in ("instruction", "input", "output"):
            val = obj.get(key, "")
            if not isinstance(val, str):
                raise UserError(
                    f"must be a string, got {type(val).__name__}", path=where, field=key
                )
            fields[key] = val
        if not fields["instruction"].strip():
            raise UserError("must be a non-empty string", path=where, field="instruction")
        return Record(prompt=alpaca_prompt(fields), answer=fields["output"])
    raise UserError(
        'neither "text" nor "instruction": expected an Alpaca record '
        '{"instruction", "input", "output"} or {"text": ...}',
        path=where,
    )


def parse_lines(lines: Iterable[str], source: str) -> Iterator[Record]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"not valid JSON ({exc.msg} at column {exc.colno})", path=where
            ) from exc
        yield parse_line(obj, where=where)


def read_records(path: Path) -> list[Record]:
    try:
        with open(path, encoding="utf-8") as fh:
            records = list(parse_lines(fh, str(path)))
    except UnicodeDecodeError as exc:
        raise UserError(f"not UTF-8 text ({exc.reason})", path=path, field="--calib") from exc
    if not records:
        raise UserError(
            'no records; expected JSONL of Alpaca records or {"text": ...}',
            path=path,
            field="--calib",
        )
    return records


def select(records: list[Record], num_samples: int, seed: int) -> list[Record]:
    """A seeded sample of ``num_samples`` records (all of them, shuffled, when fewer)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [records[i] for i in order[:num_samples]]
