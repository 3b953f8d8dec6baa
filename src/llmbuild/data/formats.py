"""Readers for the input formats users bring: pretraining text and instruction data.

Every reader yields plain Python values and raises UserError naming the file, the record
(line number for JSONL, index for a JSON list) and the field on malformed input. Text is
decoded line by line, so a byte that is not UTF-8 is reported as ``file:line``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError

Message = dict[str, str]
INSTRUCTION_FORMATS = ("alpaca", "sharegpt", "openai")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "chatgpt": "assistant",
    "bing": "assistant",
}


_FIX_ENCODING = "re-encode the file as UTF-8"


class Tally:
    """How much of an input a reader has consumed (bytes, or parquet rows), for ETAs."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0

    @property
    def fraction(self) -> float | None:
        return min(self.done / self.total, 1.0) if self.total else None


def _decode_line(raw: bytes, path: Path, lineno: int) -> str:
    """One line of a text file as str; a byte that is not UTF-8 is a ``file:line`` error."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); {_FIX_ENCODING}",
            path=f"{path}:{lineno}",
        ) from None
    return line[1:] if lineno == 1 and line.startswith("\ufeff") else line


def _lines(path: Path, tally: Tally | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) of a UTF-8 text file."""
    tally = tally or Tally()
    tally.total = path.stat().st_size
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            tally.done += len(raw)
            yield lineno, _decode_line(raw, path, lineno).rstrip("\r\n")


def _read_text(path: Path) -> str:
    """A whole UTF-8 file; a byte that is not UTF-8 is reported with its line and offset."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(
            f"not UTF-8 (byte 0x{data[exc.start]:02x} at byte offset {exc.start}, column "
            f"{column}); {_FIX_ENCODING}",
            path=f"{path}:{line}",
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _records(path: Path, tally: Tally | None = None) -> Iterator[tuple[str, Any]]:
    """(location, record) pairs from a .jsonl/.json file."""
    if not path.is_file():
        raise UserError("file not found; check the path in the config", path=path)
    if path.suffix == ".json":
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as exc:
            raise UserError(
                f"not valid JSON ({exc.msg} at line {exc.lineno}); "
                "fix the file or use .jsonl with one record per line",
                path=path,
            ) from None
        if not isinstance(data, list):
            raise UserError("a .json dataset must be a list of records", path=path)
        for i, rec in enumerate(data):
            yield f"record {i}", rec
        return
    for lineno, line in _lines(path, tally):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"malformed JSON ({exc.msg}); each line must be one JSON object",
                path=f"{path}:{lineno}",
            ) from None
        yield str(lineno), rec


def _field(rec: Any, key: str, path: Path, where: str, kind: type = str) -> Any:
    if not isinstance(rec, dict):
        raise UserError(f"expected a JSON object, got {type(rec).__name__}", path=f"{path}:{where}")
    if key not in rec:
        raise UserError(f"missing; every record needs {key!r}", path=f"{path}:{where}", field=key)
    val = rec[key]
    if not isinstance(val, kind):
        raise UserError(
            f"must be a {kind.__name__}, got {type(val).__name__}",
            path=f"{path}:{where}",
            field=key,
        )
    return val


def read_pretrain(
    path: str | Path, text_key: str = "text", tally: Tally | None = None
) -> Iterator[str]:
    """Documents from parquet, json/jsonl (``text_key`` field) or plain text (paragraphs),
    streamed: parquet a batch of rows at a time, the others a line at a time (a .json list is
    one JSON value, so it is read whole). ``tally`` follows how much has been read."""
    path = Path(path)
    tally = tally or Tally()
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        if not path.is_file():
            raise UserError("file not found; check the path in the config", path=path)
        pf = pq.ParquetFile(path)
        columns = pf.schema_arrow.names
        if text_key not in columns:
            raise UserError(
                f"no column {text_key!r}; columns are {columns}; set text_key",
                path=path,
                field=text_key,
            )
        tally.total = pf.metadata.num_rows
        for batch in pf.iter_batches(batch_size=1024, columns=[text_key]):
            tally.done += batch.num_rows
            for value in batch.column(0).to_pylist():
                if value:
                    yield value
        return
    if path.suffix in (".txt", ".text", ".md"):
        if not path.is_file():
            raise UserError("file not found; check the path in the config", path=path)
        para: list[str] = []
        for _, line in _lines(path, tally):
            if line.strip():
                para.append(line)
            elif para:
                yield "\n".join(para)
                para = []
        if para:
            yield "\n".join(para)
        return
    if path.suffix not in (".json", ".jsonl"):
        raise UserError(
            "unknown pretraining format; use .parquet, .json, .jsonl or .txt", path=path
        )
    for where, rec in _records(path, tally):
        text = _field(rec, text_key, path, where)
        if text:
            yield text


def alpaca_messages(rec: Any, path: Path, where: str) -> list[Message]:
    instruction = _field(rec, "instruction", path, where)
    output = _field(rec, "output", path, where)
    inp = rec.get("input", "") or ""
    if not isinstance(inp, str):
        raise UserError("must be a string", path=f"{path}:{where}", field="input")
    msgs: list[Message] = []
    if rec.get("system"):
        msgs.append({"role": "system", "content": str(rec["system"])})
    for turn in rec.get("history") or []:
        if not (isinstance(turn, list) and len(turn) == 2):
            raise UserError(
                "each history item must be [prompt, answer]",
                path=f"{path}:{where}",
                field="history",
            )
        msgs += [
            {"role": "user", "content": str(turn[0])},
            {"role": "assistant", "content": str(turn[1])},
        ]
    prompt = instruction + ("\n" + inp if inp else "")
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return msgs


def alpaca_prompt(rec: dict[str, str]) -> str:
    """The user turn of an Alpaca record, as the instruction handler renders it."""
    inp = rec.get("input") or ""
    return rec["instruction"] + ("\n" + inp if inp else "")


def _sharegpt_messages(rec: Any, path: Path, where: str) -> list[Message]:
    conv = _field(rec, "conversations", path, where, list)
    msgs: list[Message] = []
    for j, turn in enumerate(conv):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise UserError(
                "each turn needs 'from' and 'value'",
                path=f"{path}:{where}",
                field=f"conversations[{j}]",
            )
        role = _SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise UserError(
                f"unknown speaker {turn['from']!r}; use human/gpt/system",
                path=f"{path}:{where}",
                field=f"conversations[{j}].from",
            )
        msgs.append({"role": role, "content": str(turn["value"])})
    return msgs


def _openai_messages(rec: Any, path: Path, where: str) -> list[Message]:
    raw = _field(rec, "messages", path, where, list)
    msgs: list[Message] = []
    for j, m in enumerate(raw):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("content"), str)
            or m.get("role") not in ("system", "user", "assistant")
        ):
            raise UserError(
                "each message needs role system/user/assistant and string content",
                path=f"{path}:{where}",
                field=f"messages[{j}]",
            )
        msgs.append({"role": m["role"], "content": m["content"]})
    return msgs


_READERS = {"alpaca": alpaca_messages, "sharegpt": _sharegpt_messages, "openai": _openai_messages}


def read_instructions(
    path: str | Path, fmt: str, tally: Tally | None = None
) -> Iterator[list[Message]]:
    """Conversations (lists of role/content messages) from an instruction dataset."""
    path = Path(path)
    if fmt not in _READERS:
        raise UserError(
            f"unknown instruction format {fmt!r}; choose one of {list(INSTRUCTION_FORMATS)}",
            field="format",
        )
    read = _READERS[fmt]
    for where, rec in _records(path, tally):
        msgs = read(rec, path, where)
        if not any(m["role"] == "assistant" for m in msgs):
            raise UserError("no assistant turn to train on", path=f"{path}:{where}")
        yield msgs
