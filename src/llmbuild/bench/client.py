"""Client for an OpenAI-compatible service: streamed completions (the benchmarks' hot path,
``Pool`` + ``stream_completion`` on asyncio's protocol layer) and chat answers (aiohttp).

Every request returns a record; transport errors, HTTP errors, server error events and streams
cut before ``data: [DONE]`` become ``success=False`` with an ``error`` string, never an
exception (cancellation excepted). The API key travels only in the Authorization header.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from llmbuild.bench.records import RequestRecord, RequestSpec
from llmbuild.bench.workload import Workload
from llmbuild.errors import UserError

T = TypeVar("T")
R = TypeVar("R")
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Endpoint:
    """Where to send requests: ``base_url`` ends in ``/v1``; the key is never printed."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise UserError(
                f"base_url must start with http:// or https://, got {self.base_url!r}",
                field="base_url",
            )
        if not self.model:
            raise UserError(
                "no model name; give --model or a served model in the endpoint file", field="model"
            )

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h


def api_key_from_env(name: str | None) -> str | None:
    """The key in environment variable ``name`` (the flag names the variable, not the key)."""
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise UserError(
            f"environment variable {name} is not set or empty; export it or drop the flag",
            field="--api-key-env",
        )
    return key


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text[:MAX_ERROR_CHARS]


def completion_payload(
    endpoint: Endpoint, spec: RequestSpec, api: str = "completions"
) -> dict[str, Any]:
    """The request body: exactly ``output_len`` tokens when ``ignore_eos``, else at most."""
    body: dict[str, Any] = {"model": spec.model or endpoint.model}
    if api == "chat":
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    else:
        body["prompt"] = spec.prompt
    body.update(
        max_tokens=spec.output_len,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    if spec.ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = spec.output_len
    return body


def _chunk_output(msg: dict[str, Any], api: str) -> tuple[bool, str]:
    """(does this chunk carry output, its text). A completions chunk is one engine step (its
    text may be empty for a partial UTF-8 character); a chat chunk that only announces the
    assistant role carries none."""
    choice = msg["choices"][0]
    if api == "completions":
        return True, choice.get("text") or ""
    delta = choice.get("delta") or {}
    text = delta.get("content") or delta.get("reasoning_content") or ""
    if "role" in delta and not text:
        return False, ""
    return True, text


_TEXT = {
    "completions": re.compile(rb'"text"\s*:\s*"'),
    "chat": re.compile(rb'"content"\s*:\s*"'),
}
_USAGE = re.compile(rb'"usage"\s*:\s*(null)?')
_FULL_PARSE = (b'"error"', b'"role"', b"reasoning_content")


def _plain_chunk_text(payload: bytes, api: str) -> str | None:
    """The output text of a plain stream chunk (the one choice's ``text``, or a chat delta's
    ``content``, with no usage, error or role in it), read without parsing the rest; None
    for any other chunk, which then gets ``json.loads``. Inside a JSON string a quote is
    always escaped, so ``"text":"`` can only be the key itself."""
    if b'"choices"' not in payload or any(k in payload for k in _FULL_PARSE):
        return None
    key = _TEXT[api]
    m = key.search(payload)
    if m is None or key.search(payload, m.end()) is not None:
        return None
    usage = _USAGE.search(payload)
    if usage is not None and usage.group(1) is None:
        return None
    try:
        text, _ = scanstring(payload[m.end() :].decode("utf-8"), 0)
    except (ValueError, UnicodeDecodeError):
        return None
    return text


class Pool:
    """Keep-alive HTTP/1.1 connections to one service, for streamed benchmark requests.

    The benchmark's hot path, written on asyncio's transport/protocol layer rather than a
    general HTTP client: a request is one pre-serialized write, and the response (status,
    headers, chunked body, server-sent events) is parsed in the protocol's ``data_received``
    as bytes arrive, each event timed at the moment its bytes were read, with no coroutine
    switch per chunk. The coroutine that sent the request wakes once, when it is complete.
    Connections are opened on demand and reused; there is no cap on them (a concurrency
    limit is the caller's, so an open-loop run never queues on the pool).
    """

    def __init__(self, base_url: str, timeout_s: float) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise UserError(f"not an http(s) URL: {base_url!r}", field="base_url")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if url.scheme == "https" else None
        )
        default_port = self.port == (443 if self.ssl else 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host and not default_port:  # an IPv6 literal
            self.host_header = f"[{self.host}]:{self.port}"
        self.timeout_s = timeout_s
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for conn in list(self.open):
            conn.close()
        self.idle.clear()

    def take_idle(self) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.lost:
                return conn
        return None

    async def acquire(self) -> _Connection:
        conn = self.take_idle()
        if conn is not None:
            return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self), self.host, self.port, ssl=self.ssl
            )
        except OSError as exc:
            raise ClientConnectorError(
                f"Cannot connect to host {self.host}:{self.port} "
                f"ssl:{'default' if self.ssl else 'False'} [{exc.strerror or exc}]"
            ) from exc
        self.open.add(conn)
        return conn

    def release(self, conn: _Connection, reusable: bool) -> None:
        if reusable and not conn.lost:
            self.idle.append(conn)
        else:
            conn.close()

    def request_bytes(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host_header}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head += [f"Content-Length: {len(body)}", "Accept: text/event-stream", "", ""]
        return "\r\n".join(head).encode("latin-1") + body


class ClientConnectorError(OSError):
    """The service could not be reached (named as aiohttp names it, in records)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; feeds what it reads to the response it carries."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.response: _Response | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            self.close()  # bytes nobody asked for: the connection is not usable
            return
        self.response.feed(data, time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.open.discard(self)
        response, self.response = self.response, None
        if response is not None:
            response.lost(exc)

    def carry(self, response: _Response, data: bytes) -> None:
        self.response = response
        response.conn = self
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        self.lost = True
        self.response = None
        self.pool.open.discard(self)
        if self.transport is not None:
            self.transport.close()


class _Response:
    """Parses one HTTP response into its record: status line, headers, a chunked or sized
    body and the server-sent events in it.

    ``done`` resolves when the record is settled: at ``data: [DONE]``, at an error, or when
    the connection ends. The framing is followed to the end of the body even after that, and
    the connection goes back to the pool the moment the body ends (closed instead when the
    response failed before its end)."""

    def __init__(
        self, rec: RequestRecord, st: float, api: str, speculative: bool, pool: Pool
    ) -> None:
        self.rec, self.st, self.api, self.speculative, self.pool = rec, st, api, speculative, pool
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        limit = pool.timeout_s
        self.timer: asyncio.TimerHandle | None = loop.call_at(
            loop.time() + limit, self.fail, f"TimeoutError: no complete answer within {limit:g} s"
        )
        self.conn: _Connection | None = None
        self.buf = b""
        self.head = True  # still reading the status line and headers
        self.status = 0
        self.chunked = False
        self.remaining = -1  # body bytes left when sized; -1: chunked or up to the close
        self.chunk_left = 0  # bytes left of the current chunk; -2: its CRLF is next
        self.keep_alive = True
        self.body = bytearray()  # a non-200 answer's body
        self.sse = b""  # an incomplete event-stream line
        self.last = st
        self.parts: list[str] = []
        self.usage_tokens: int | None = None
        self.saw_done = False
        self.body_ended = False

    # -- outcome --------------------------------------------------------------------------
    def _settle(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.done.done():
            self.done.set_result(None)

    def fail(self, error: str, ts: float | None = None) -> None:
        """A failed record; the connection is closed unless its answer ended cleanly."""
        if not self.body_ended and self.conn is not None:
            self.conn.close()
        if self.done.done():
            return
        self.rec.error = error[:MAX_ERROR_CHARS]
        self.rec.latency = (ts if ts is not None else time.perf_counter()) - self.st
        self._settle()

    def lost(self, exc: Exception | None) -> None:
        self.conn = None
        if self.done.done():
            return
        if not self.head and self.status == 200 and self.remaining < 0 and not self.chunked:
            self._complete()  # a body delimited by the connection's end
            return
        why = f"{type(exc).__name__}: {exc}" if exc else "ServerDisconnectedError: disconnected"
        if not self.head and self.status == 200:
            self._complete(cut=why)
        else:
            self.fail(why)

    # -- parsing --------------------------------------------------------------------------
    def feed(self, data: bytes, ts: float) -> None:
        """Bytes from the connection, read at ``ts``."""
        if self.body_ended:
            return
        if self.head:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data, self.buf = self.buf[:end], self.buf[end + 4 :], b""
            if not self._headers(head.decode("latin-1")):
                return
        if self.chunked:
            self._dechunk(data, ts)
            return
        if self.remaining >= 0:
            data = data[: self.remaining]
            self.remaining -= len(data)
        self._body(data, ts)
        if self.remaining == 0:
            self._body_end(ts)

    def _headers(self, text: str) -> bool:
        lines = text.split("\r\n")
        try:
            version, code = lines[0].split(" ", 2)[:2]
            self.status = int(code)
        except ValueError:
            self.fail(f"ClientResponseError: bad status line {lines[0][:100]!r}")
            return False
        self.head = False
        self.keep_alive = version == "HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "transfer-encoding":
                self.chunked = "chunked" in value
            elif name == "content-length" and value.isdigit():
                self.remaining = int(value)
            elif name == "connection":
                self.keep_alive = value == "keep-alive" or (self.keep_alive and value != "close")
        if self.chunked:
            self.remaining = -1
        elif self.remaining < 0:
            self.keep_alive = False  # the body ends with the connection
        elif self.remaining == 0:
            self._body_end(time.perf_counter())
            return False
        return True

    def _dechunk(self, data: bytes, ts: float) -> None:
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        while pos < n:
            if self.chunk_left > 0:
                take = min(self.chunk_left, n - pos)
                self._body(buf[pos : pos + take], ts)
                pos += take
                self.chunk_left -= take
                if self.chunk_left == 0:
                    self.chunk_left = -2
                continue
            if self.chunk_left == -2:
                if n - pos < 2:
                    break
                pos += 2
                self.chunk_left = 0
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            try:
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
            except ValueError:
                self.fail("ClientPayloadError: bad chunk size", ts)
                return
            if size == 0:
                if buf.find(b"\r\n\r\n", eol) < 0:  # the end of the trailers (usually none)
                    break
                self.buf = b""
                self._body_end(ts)
                return
            pos = eol + 2
            self.chunk_left = size
        self.buf = buf[pos:]

    def _body(self, data: bytes, ts: float) -> None:
        if self.status != 200:
            self.body += data
            return
        if self.done.done():
            return
        text = self.sse + data if self.sse else data
        lines = text.split(b"\n")
        self.sse = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:].strip(), ts)
                if self.done.done():
                    return

    def _body_end(self, ts: float) -> None:
        self.body_ended = True
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.response = None
            self.pool.release(conn, self.keep_alive)
        if self.done.done():
            return
        if self.status != 200:
            body = self.body.decode("utf-8", errors="replace")[:300]
            self.fail(f"HTTP {self.status}: {body}".strip(), ts)
            return
        if self.sse.startswith(b"data:"):
            self._event(self.sse[5:].strip(), ts)
        self._complete()

    def _event(self, payload: bytes, ts: float) -> None:
        rec = self.rec
        if payload == b"[DONE]":
            self.saw_done = True
            self._complete()
            return
        text = _plain_chunk_text(payload, self.api)
        if text is not None:  # the common chunk: one choice's text, nothing else to read
            self._output(text, ts)
            return
        try:
            msg = json.loads(payload)
        except ValueError as exc:
            self.fail(f"JSONDecodeError: {exc}", ts)
            return
        if msg.get("error"):
            err = msg["error"]
            detail = err.get("message", err) if isinstance(err, dict) else err
            self.fail(f"server error event: {detail}", ts)
            return
        if msg.get("choices"):
            carries, text = _chunk_output(msg, self.api)
            if carries:
                self._output(text, ts)
        usage = msg.get("usage")
        if usage and usage.get("completion_tokens") is not None:
            self.usage_tokens = int(usage["completion_tokens"])
            if usage.get("prompt_tokens") is not None:
                rec.server_prompt_tokens = int(usage["prompt_tokens"])

    def _output(self, text: str, ts: float) -> None:
        """A chunk that carries output arrived at ``ts``."""
        rec = self.rec
        if rec.chunks == 0:
            rec.ttft = ts - self.st
        else:
            rec.itl.append(ts - self.last)
        self.last = ts
        rec.chunks += 1
        self.parts.append(text)

    def _complete(self, cut: str | None = None) -> None:
        """Settle a stream's record at [DONE] or at its end (``cut``: the connection's)."""
        if self.done.done():
            return
        rec = self.rec
        rec.generated_text = "".join(self.parts)
        rec.latency = self.last - self.st
        if not self.saw_done:
            rec.error = f"stream ended before 'data: [DONE]' after {rec.chunks} chunks"
            if cut:
                rec.error = f"{rec.error} ({cut})"[:MAX_ERROR_CHARS]
        elif rec.chunks == 0:
            rec.error = "no tokens streamed"
        elif self.speculative and self.usage_tokens is None:
            rec.error = (
                "speculative mode needs the server's token count, but the stream sent no "
                "usage (stream_options.include_usage unsupported?)"
            )
        else:
            rec.success = True
        if self.usage_tokens is not None:
            rec.output_tokens, rec.output_tokens_source = self.usage_tokens, "usage"
        else:
            rec.output_tokens, rec.output_tokens_source = rec.chunks, "chunks"
        self._settle()


def open_pool(endpoint: Endpoint, timeout_s: float) -> Pool:
    """The connections a streamed benchmark sends its requests over."""
    return Pool(endpoint.base_url, timeout_s)


def prepare(pool: Pool, endpoint: Endpoint, spec: RequestSpec, workload: Workload) -> bytes:
    """The request's bytes (its JSON body serialized), made before its time to be sent."""
    body = json.dumps(completion_payload(endpoint, spec, workload.api)).encode()
    path = urlsplit(endpoint.url(workload.path)).path
    return pool.request_bytes(path, body, endpoint.headers())


class Request:
    """One streamed request: ``send`` starts its clock and writes it at once when a
    connection is idle; ``result`` (or a callback on ``response.done``, when ``send`` wrote
    it) then has its record."""

    __slots__ = ("pool", "data", "rec", "response")

    def __init__(self, pool: Pool, data: bytes, spec: RequestSpec, endpoint: Endpoint) -> None:
        self.pool, self.data = pool, data
        self.rec = RequestRecord(
            request_id=spec.request_id,
            prompt_len=spec.prompt_len,
            output_len=spec.output_len,
            model=spec.model or endpoint.model,
        )
        self.response: _Response | None = None

    def send(self, run_start: float, api: str, speculative: bool) -> bool:
        """Start the clock and write the request on an idle connection (True); without one
        (False), ``result`` opens one: the clock then includes connecting, as a user's would."""
        st = time.perf_counter()
        self.rec.start_time = st - run_start if run_start else 0.0
        response = self.response = _Response(self.rec, st, api, speculative, self.pool)
        conn = self.pool.take_idle()
        if conn is None:
            return False
        conn.carry(response, self.data)
        return True

    async def result(self) -> RequestRecord:
        response = self.response
        assert response is not None, "send() first"
        try:
            if response.conn is None and not response.done.done():
                # connecting counts against the request's time limit too
                acquiring = asyncio.ensure_future(self.pool.acquire())
                await asyncio.wait((acquiring, response.done), return_when="FIRST_COMPLETED")
                if not acquiring.done():
                    acquiring.cancel()  # timed out while connecting
                    return self.rec
                try:
                    conn = acquiring.result()
                except ClientConnectorError as exc:
                    response.fail(_error(exc))
                    return self.rec
                if response.done.done():
                    self.pool.release(conn, True)
                else:
                    conn.carry(response, self.data)
            await response.done
        except asyncio.CancelledError:
            if response.timer is not None:
                response.timer.cancel()
            if response.conn is not None:
                response.conn.close()
            raise
        return self.rec


async def stream_completion(
    pool: Pool,
    endpoint: Endpoint,
    spec: RequestSpec,
    run_start: float = 0.0,
    workload: Workload | None = None,
) -> RequestRecord:
    """Send one streamed request and time it: TTFT, every inter-chunk gap, latency.

    The body is serialized before the clock starts, so the client's JSON work is not TTFT.
    Every outcome is a record: HTTP errors, error events, transport errors, the per-request
    time limit and streams cut before ``data: [DONE]`` are failures.
    """
    workload = workload or Workload()
    req = Request(pool, prepare(pool, endpoint, spec, workload), spec, endpoint)
    req.send(run_start, workload.api, workload.speculative)
    return await req.result()


@dataclass
class ChatResult:
    text: str = ""
    success: bool = False
    error: str = ""
    latency: float = 0.0
    completion_tokens: int | None = None


async def chat_completion(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    messages: list[dict[str, str]],
    max_tokens: int,
    temperature: float = 0.0,
) -> ChatResult:
    """One non-streamed /v1/chat/completions call; failures become ``success=False``."""
    body = {
        "model": endpoint.model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": False,
    }
    res = ChatResult()
    st = time.perf_counter()
    try:
        async with session.post(
            endpoint.url("chat/completions"), json=body, headers=endpoint.headers()
        ) as resp:
            payload = await resp.text()
            res.latency = time.perf_counter() - st
            if resp.status != 200:
                res.error = f"HTTP {resp.status}: {payload[:300]}".strip()
                return res
            msg = json.loads(payload)
            res.text = msg["choices"][0]["message"].get("content") or ""
            usage = msg.get("usage") or {}
            if usage.get("completion_tokens") is not None:
                res.completion_tokens = int(usage["completion_tokens"])
            res.success = True
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        res.latency = time.perf_counter() - st
        res.error = _error(exc)
    return res


async def run_concurrent(
    items: Sequence[T],
    concurrency: int,
    fn: Callable[[T], Awaitable[R]],
    on_done: Callable[[int], None] | None = None,
) -> list[R]:
    """Apply ``fn`` to every item with at most ``concurrency`` in flight; results in order.

    ``concurrency`` workers each take the next item as soon as their last one finishes, so
    exactly ``min(concurrency, remaining)`` requests are in flight at any time.
    """
    if concurrency < 1:
        raise UserError(f"concurrency must be >= 1, got {concurrency}", field="concurrency")
    results: list[R | None] = [None] * len(items)
    it = iter(range(len(items)))
    done = 0

    async def worker() -> None:
        nonlocal done
        for i in it:
            results[i] = await fn(items[i])
            done += 1
            if on_done is not None:
                on_done(done)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(items)) or 1)))
    return results  # type: ignore[return-value]


def make_session(concurrency: int, timeout_s: float) -> aiohttp.ClientSession:
    """A session with one connection per concurrent request and a per-request time limit.

    ``concurrency`` 0 means no limit: aiohttp's default pool (100 connections) would
    otherwise cap an open-loop benchmark silently."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(concurrency, 0), force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )
