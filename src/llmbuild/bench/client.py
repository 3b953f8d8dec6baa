"""aiohttp client for an OpenAI-compatible service: streamed completions and chat answers.

Every request returns a record; transport errors, HTTP errors, server error events and streams
cut before ``data: [DONE]`` become ``success=False`` with an ``error`` string, never an
exception (cancellation excepted). The API key travels only in the Authorization header.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

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


async def stream_completion(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    spec: RequestSpec,
    run_start: float = 0.0,
    workload: Workload | None = None,
) -> RequestRecord:
    """Send one streamed request and time it: TTFT, every inter-chunk gap, latency.

    The body is serialized before the clock starts, so the client's JSON work is not TTFT.
    """
    workload = workload or Workload()
    rec = RequestRecord(
        request_id=spec.request_id,
        prompt_len=spec.prompt_len,
        output_len=spec.output_len,
        model=spec.model or endpoint.model,
    )
    data = json.dumps(completion_payload(endpoint, spec, workload.api)).encode()
    headers = endpoint.headers()
    url = endpoint.url(workload.path)
    chunks = 0
    usage_tokens: int | None = None
    text_parts: list[str] = []
    st = time.perf_counter()
    rec.start_time = st - run_start if run_start else 0.0
    last = st
    done = False
    try:
        async with session.post(url, data=data, headers=headers) as resp:
            if resp.status != 200:
                body = (await resp.text())[:300]
                rec.error = f"HTTP {resp.status}: {body}".strip()
                rec.latency = time.perf_counter() - st
                return rec
            async for raw in resp.content:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                data_text = line[5:].strip()
                if data_text == "[DONE]":
                    done = True
                    break
                ts = time.perf_counter()
                msg = json.loads(data_text)
                if msg.get("error"):
                    err = msg["error"]
                    detail = err.get("message", err) if isinstance(err, dict) else err
                    rec.error = f"server error event: {detail}"[:MAX_ERROR_CHARS]
                    rec.latency = ts - st
                    return rec
                if msg.get("choices"):
                    carries, text = _chunk_output(msg, workload.api)
                    if carries:
                        if chunks == 0:
                            rec.ttft = ts - st
                        else:
                            rec.itl.append(ts - last)
                        last = ts
                        chunks += 1
                        text_parts.append(text)
                usage = msg.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
                    if usage.get("prompt_tokens") is not None:
                        rec.server_prompt_tokens = int(usage["prompt_tokens"])
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a failed request is a record, not a crash
        rec.error = _error(exc)
        rec.latency = time.perf_counter() - st
        rec.chunks = chunks
        return rec
    rec.generated_text = "".join(text_parts)
    rec.latency = last - st
    rec.chunks = chunks
    if not done:
        rec.error = f"stream ended before 'data: [DONE]' after {chunks} chunks"
    elif chunks == 0:
        rec.error = "no tokens streamed"
    elif workload.speculative and usage_tokens is None:
        rec.error = (
            "speculative mode needs the server's token count, but the stream sent no usage "
            "(stream_options.include_usage unsupported?)"
        )
    else:
        rec.success = True
    if usage_tokens is not None:
        rec.output_tokens, rec.output_tokens_source = usage_tokens, "usage"
    else:
        rec.output_tokens, rec.output_tokens_source = chunks, "chunks"
    return rec


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
