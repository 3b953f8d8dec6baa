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


def completion_payload(endpoint: Endpoint, spec: RequestSpec) -> dict[str, Any]:
    """The /v1/completions body: exactly ``output_len`` tokens when ``ignore_eos``."""
    body: dict[str, Any] = {
        "model": endpoint.model,
        "prompt": spec.prompt,
        "max_tokens": spec.output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if spec.ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = spec.output_len
    return body


async def stream_completion(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    spec: RequestSpec,
    run_start: float = 0.0,
) -> RequestRecord:
    """Send one streamed completion and time it: TTFT, every inter-chunk gap, latency."""
    rec = RequestRecord(
        request_id=spec.request_id, prompt_len=spec.prompt_len, output_len=spec.output_len
    )
    chunks = 0
    usage_tokens: int | None = None
    text_parts: list[str] = []
    st = time.perf_counter()
    rec.start_time = st - run_start if run_start else 0.0
    last = st
    done = False
    try:
        async with session.post(
            endpoint.url("completions"),
            json=completion_payload(endpoint, spec),
            headers=endpoint.headers(),
        ) as resp:
            if resp.status != 200:
                body = (await resp.text())[:300]
                rec.error = f"HTTP {resp.status}: {body}".strip()
                return rec
            async for raw in resp.content:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line or line.startswith(":") or not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    done = True
                    break
                ts = time.perf_counter()
                msg = json.loads(data)
                if msg.get("error"):
                    err = msg["error"]
                    detail = err.get("message", err) if isinstance(err, dict) else err
                    rec.error = f"server error event: {detail}"[:MAX_ERROR_CHARS]
                    return rec
                if msg.get("choices"):
                    if chunks == 0:
                        rec.ttft = ts - st
                    else:
                        rec.itl.append(ts - last)
                    last = ts
                    chunks += 1
                    text_parts.append(msg["choices"][0].get("text") or "")
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
        return rec
    rec.generated_text = "".join(text_parts)
    rec.latency = last - st
    if not done:
        rec.error = f"stream ended before 'data: [DONE]' after {chunks} chunks"
    elif chunks == 0:
        rec.error = "no tokens streamed"
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
    """A session with one connection per concurrent request and a per-request time limit."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(concurrency, 1), force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )
