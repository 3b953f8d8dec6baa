"""The streaming client's own HTTP/1.1 + server-sent-events parser, fed byte by byte.

The benchmark's hot path parses responses in the connection's ``data_received``; these tests
feed it answers cut at every possible place (a chunk size line, a CRLF, an event, a UTF-8
character split across reads) and check the record is the one the whole answer gives, and
that the plain-chunk shortcut reads exactly what ``json.loads`` reads.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from llmbuild.bench import client
from llmbuild.bench.records import RequestRecord

pytestmark = pytest.mark.unit


def _sse(obj: object, compact: bool) -> bytes:
    sep = (",", ":") if compact else (", ", ": ")
    return f"data: {json.dumps(obj, separators=sep, ensure_ascii=False)}\n\n".encode()


def _answer(api: str, compact: bool, usage: bool = True) -> bytes:
    """A streamed answer as a server sends it: headers, then one HTTP chunk per event."""
    events = []
    if api == "chat":
        events.append({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    for i, text in enumerate([" t0", ' "q" é', " ✓\\n", ""]):
        choice = (
            {"index": 0, "text": text, "finish_reason": None}
            if api == "completions"
            else {"index": 0, "delta": {"content": text}, "finish_reason": None}
        )
        events.append({"id": "x", "object": "chunk", "choices": [choice], "usage": None})
        if i == 3:
            choice["finish_reason"] = "length"
    if usage:
        events.append(
            {"id": "x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
        )
    body = b"".join(_sse(e, compact) for e in events) + b"data: [DONE]\n\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    chunks = b""
    for k in range(0, len(body), 37):
        part = body[k : k + 37]
        chunks += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return head + chunks + b"0\r\n\r\n"


class _Pool:
    timeout_s = 30.0

    def __init__(self) -> None:
        self.released: list[bool] = []

    def release(self, conn: object, reusable: bool) -> None:
        self.released.append(reusable)


def _parse(data: bytes, api: str, cuts: list[int]) -> RequestRecord:
    async def run() -> RequestRecord:
        rec = RequestRecord()
        response = client._Response(rec, 0.0, api, False, _Pool())  # type: ignore[arg-type]
        start = 0
        for k, end in enumerate([*cuts, len(data)]):
            response.feed(data[start:end], 1.0 + k)
            start = end
        assert response.done.done() and response.body_ended
        return rec

    return asyncio.run(run())


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("compact", [True, False])
def test_a_stream_cut_anywhere_gives_the_same_record(api, compact):
    data = _answer(api, compact)
    whole = _parse(data, api, [])
    assert whole.success and whole.error == ""
    assert whole.chunks == 4 and whole.output_tokens == 4 and whole.output_tokens_source == "usage"
    assert whole.generated_text == ' t0 "q" é ✓\\n' and whole.server_prompt_tokens == 3
    for cut in range(1, len(data)):
        rec = _parse(data, api, [cut])
        assert (rec.success, rec.generated_text, rec.chunks, rec.output_tokens) == (
            whole.success,
            whole.generated_text,
            whole.chunks,
            whole.output_tokens,
        ), cut
    # one byte per read: every event is timed at the read that completed it
    rec = _parse(data, api, list(range(1, len(data))))
    assert rec.generated_text == whole.generated_text and len(rec.itl) == 3
    assert all(gap > 0 for gap in rec.itl)


def test_errors_and_cut_streams_are_records():
    rec = _parse(
        b"HTTP/1.1 500 Internal\r\nContent-Length: 9\r\n\r\nboom\nmore", "completions", [20]
    )
    assert not rec.success and rec.error == "HTTP 500: boom\nmore"
    event = _sse({"error": {"message": "engine died"}}, True)
    body = f"{len(event):x}\r\n".encode() + event + b"\r\n0\r\n\r\n"
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    rec = _parse(data, "completions", [])
    assert not rec.success and rec.error == "server error event: engine died"

    async def cut() -> RequestRecord:
        rec = RequestRecord()
        response = client._Response(rec, 0.0, "completions", False, _Pool())  # type: ignore[arg-type]
        data = _answer("completions", True)
        response.feed(data[: len(data) // 2], 1.0)
        response.lost(ConnectionResetError("reset by peer"))
        return rec

    rec = asyncio.run(cut())
    assert not rec.success and rec.error.startswith("stream ended before 'data: [DONE]'")
    assert "ConnectionResetError" in rec.error


@pytest.mark.parametrize("compact", [True, False])
def test_plain_chunk_shortcut_reads_what_json_reads(compact):
    texts = ["", " a", ' "text": "x', "\\", "é ✓ 日本", "\u2028", "line\nbreak"]
    for text in texts:
        for api, choice in (
            ("completions", {"index": 0, "text": text, "logprobs": None}),
            ("chat", {"index": 0, "delta": {"content": text}}),
        ):
            payload = _sse({"id": "c", "choices": [choice], "usage": None}, compact)[6:-2]
            assert client._plain_chunk_text(payload, api) == text
    # what the shortcut leaves to json.loads
    others = [
        {"choices": [], "usage": {"completion_tokens": 3}},
        {"choices": [{"index": 0, "text": "a"}], "usage": {"completion_tokens": 1}},
        {"choices": [{"index": 0, "text": "a"}, {"index": 1, "text": "b"}]},
        {"error": {"message": "no"}, "choices": [{"index": 0, "text": "a"}]},
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": None, "reasoning_content": "r"}}]},
    ]
    for obj in others:
        payload = _sse(obj, compact)[6:-2]
        assert client._plain_chunk_text(payload, "completions") is None
        assert client._plain_chunk_text(payload, "chat") is None
