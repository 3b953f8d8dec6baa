"""A mock OpenAI-compatible server for client tests (aiohttp, loopback only).

Streams /v1/completions and (with ``"stream": true``) /v1/chat/completions as server-sent
events with a configurable time to first token, a configurable gap between chunks, a fraction
of HTTP 500 errors and of streams cut mid-way, several tokens per chunk (as speculative
decoding streams them), a natural length at which the "model" stops unless ``ignore_eos``,
and a set of served model names (LoRA adapters) outside which it answers 404 as vLLM does.
Non-streamed chat answers a fixed string or a function of the prompt. Runs in its own thread
and event loop, so synchronous code (CLI handlers) can call it.

    with MockOpenAI(MockConfig(ttft_s=0.05, itl_s=0.01)) as srv:
        srv.write_endpoint(tmp_path / "endpoint.json")
        ...

As a process of its own (for benchmarks/bench_client_rate.py), until SIGTERM or SIGINT:

    python tests/mock_openai.py --endpoint /tmp/mock.json [--ttft-s 0] [--itl-s 0]

``MockProcess`` runs it so from a test, whose ``kill()`` is a server dying mid-run (the
endpoint file names the process's pid and, with ``log=``, a server log to quote).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web


@dataclass
class MockConfig:
    ttft_s: float = 0.0  # delay before the first token
    itl_s: float = 0.0  # delay between later tokens
    error_rate: float = 0.0  # fraction of requests answered with HTTP 500
    disconnect_rate: float = 0.0  # fraction of streams whose connection is cut mid-way
    disconnect_after: int = 2  # tokens sent before the cut
    send_usage: bool = True  # honour stream_options.include_usage
    chat_answer: str | Callable[[str], str] = "42"
    model: str = "mock-model"
    api_key: str | None = None  # when set, require "Authorization: Bearer <key>"
    healthy: bool = True
    seed: int = 0
    tokens_per_chunk: int = 1  # >1: several tokens per chunk, as speculative decoding sends
    natural_len: int | None = None  # without ignore_eos, stop after this many tokens
    served_models: tuple[str, ...] | None = None  # names answered (default: just `model`)
    record: bool = True  # keep request bodies and stream timestamps (tests)


@dataclass
class Counters:
    requests: int = 0
    errors: int = 0
    disconnects: int = 0
    completed: int = 0
    bodies: list[dict] = field(default_factory=list)
    # per streamed request: (arrival, [time each token chunk was written]), perf_counter s
    streams: list[tuple[float, list[float]]] = field(default_factory=list)


def _sse(obj: object) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


class MockOpenAI:
    def __init__(self, config: MockConfig | None = None):
        self.config = config or MockConfig()
        self.counters = Counters()
        self._rng = random.Random(self.config.seed)
        self._whole: dict[tuple, bytes] = {}  # zero-delay answers by what shapes them
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._stopped = False

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> MockOpenAI:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def crash(self) -> None:
        """Stop serving now, dropping open streams (a server crash); safe from any thread."""
        if self._runner is not None and not self._stopped:
            self._stopped = True
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)

    def __exit__(self, *exc: object) -> None:
        self.crash()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def write_endpoint(
        self, path: str | Path, state: str = "ready", log: str | Path | None = None
    ) -> Path:
        p = Path(path)
        data = {
            "state": state,
            "base_url": self.base_url,
            "host": "127.0.0.1",
            "port": self.port,
            "model": self.config.model,
            "pid": os.getpid(),
        }
        if log is not None:
            data["log"] = str(Path(log).resolve())
        p.write_text(json.dumps(data))
        return p

    # -- handlers -------------------------------------------------------------------------
    def _denied(self, request: web.Request) -> web.Response | None:
        key = self.config.api_key
        if key and request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": {"message": "bad api key"}}, status=401)
        return None

    def _fail_now(self) -> bool:
        return self.config.error_rate > 0 and self._rng.random() < self.config.error_rate

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.config.healthy else 503)

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": self.config.model, "object": "model", "root": self.config.model}
        return web.json_response({"data": [model]})

    def _unknown_model(self, body: dict) -> web.Response | None:
        names = self.config.served_models or (self.config.model,)
        if body.get("model") in names:
            return None
        msg = f"The model `{body.get('model')}` does not exist."
        return web.json_response({"error": {"message": msg, "code": 404}}, status=404)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, chat=False)

    async def _stream(self, request: web.Request, chat: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        t0 = loop.time()  # delays count from the request's arrival
        arrival = time.perf_counter()
        cfg, cnt = self.config, self.counters
        cnt.requests += 1
        if (denied := self._denied(request)) is not None:
            return denied
        body = await request.json()
        if cfg.record:
            cnt.bodies.append(body)
        if (unknown := self._unknown_model(body)) is not None:
            cnt.errors += 1
            return unknown
        if self._fail_now():
            cnt.errors += 1
            return web.json_response({"error": {"message": "mock failure"}}, status=500)
        cut = cfg.disconnect_rate > 0 and self._rng.random() < cfg.disconnect_rate
        n_tokens = int(body.get("max_tokens", 16))
        if cfg.natural_len is not None and not body.get("ignore_eos"):
            n_tokens = min(n_tokens, cfg.natural_len)
        k = max(cfg.tokens_per_chunk, 1)
        n_chunks = math.ceil(n_tokens / k)
        prompt = body["messages"][-1]["content"] if chat else str(body.get("prompt", ""))
        prompt_tokens = len(prompt.split())
        kind = "chat.completion.chunk" if chat else "text_completion"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        writes: list[float] = []
        if cfg.record:
            cnt.streams.append((arrival, writes))
        # With no delays every chunk is due at once: one write (one send) for the whole
        # stream, so the mock spends little per request when it measures a client's ceiling.
        batch: list[bytes] | None = [] if cfg.ttft_s == 0 and cfg.itl_s == 0 and not cut else None
        usage = cfg.send_usage and (body.get("stream_options") or {}).get("include_usage")
        key = (chat, body.get("model"), n_tokens, k, bool(usage), prompt_tokens)
        if batch is not None and key in self._whole:  # the same answer as before, made once
            writes.extend([time.perf_counter()] * n_chunks)
            await resp.write_eof(self._whole[key])
            cnt.completed += 1
            return resp
        for i in range(n_chunks):
            # absolute deadlines, so sleep overshoot does not accumulate over the chunks
            if batch is None:
                await asyncio.sleep(max(0.0, t0 + cfg.ttft_s + i * cfg.itl_s - loop.time()))
            if cut and i == cfg.disconnect_after:
                cnt.disconnects += 1
                assert request.transport is not None
                request.transport.close()  # drop the connection mid-stream
                return resp
            text = "".join(f" t{j}" for j in range(i * k, min((i + 1) * k, n_tokens)))
            finish = "length" if i == n_chunks - 1 else None
            if chat:
                if i == 0:  # vLLM first announces the role, with empty content
                    role = {"index": 0, "delta": {"role": "assistant", "content": ""}}
                    if batch is None:
                        await resp.write(_sse({"object": kind, "choices": [role]}))
                    else:
                        batch.append(_sse({"object": kind, "choices": [role]}))
                choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text, "finish_reason": finish}
            chunk = {
                "id": "cmpl-mock",
                "object": kind,
                "model": body.get("model"),
                "choices": [choice],
            }
            if batch is None:
                await resp.write(_sse(chunk))
            else:
                batch.append(_sse(chunk))
            writes.append(time.perf_counter())
        tail = b""
        if usage:
            tail = _sse(
                {
                    "id": "cmpl-mock",
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": n_tokens,
                        "total_tokens": prompt_tokens + n_tokens,
                    },
                }
            )
        tail += b"data: [DONE]\n\n"
        if batch is not None:
            tail = self._whole[key] = b"".join(batch) + tail
        await resp.write_eof(tail)  # the last chunk and the end of the body in one send
        cnt.completed += 1
        return resp

    async def _chat(self, request: web.Request) -> web.Response:
        cfg, cnt = self.config, self.counters
        cnt.requests += 1
        if (denied := self._denied(request)) is not None:
            return denied
        body = await request.json()
        if body.get("stream"):
            cnt.requests -= 1  # counted again by the streaming handler
            return await self._stream(request, chat=True)
        cnt.bodies.append(body)
        if self._fail_now():
            cnt.errors += 1
            return web.json_response({"error": {"message": "mock failure"}}, status=500)
        prompt = body["messages"][-1]["content"]
        answer = cfg.chat_answer(prompt) if callable(cfg.chat_answer) else cfg.chat_answer
        await asyncio.sleep(cfg.ttft_s)
        cnt.completed += 1
        return web.json_response(
            {
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "model": cfg.model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": answer},
                    }
                ],
                "usage": {
                    "prompt_tokens": len(prompt.split()),
                    "completion_tokens": len(answer.split()),
                    "total_tokens": len(prompt.split()) + len(answer.split()),
                },
            }
        )


#: The root cause a vLLM server's log states when a W8A8 model meets an unsupported dtype.
CRASH_CAUSE = "RuntimeError: int8_scaled_mm_with_quant: expect A to be bfloat16 or half"
_CRASH_LOG = """\
INFO 05-14 10:00:01 [api_server.py:1090] Starting vLLM API server 0 on http://127.0.0.1:8000
INFO 05-14 10:00:04 [loggers.py:118] Engine 000: Avg prompt throughput: 0.0 tokens/s
ERROR 05-14 10:00:05 [core.py:586] EngineCore encountered a fatal error.
ERROR 05-14 10:00:05 [core.py:586] Traceback (most recent call last):
ERROR 05-14 10:00:05 [core.py:586]   File "vllm/v1/engine/core.py", line 577, in run_engine_core
ERROR 05-14 10:00:05 [core.py:586]     engine_core.run_busy_loop()
ERROR 05-14 10:00:05 [core.py:586]   File "vllm/_custom_ops.py", line 755, in cutlass_scaled_mm
ERROR 05-14 10:00:05 [core.py:586]     out = torch.ops._C.int8_scaled_mm_with_quant(a, b, scale_a)
ERROR 05-14 10:00:05 [core.py:586] {cause}
ERROR 05-14 10:00:05 [async_llm.py:420] AsyncLLM output_handler failed.
ERROR 05-14 10:00:05 [async_llm.py:420] Traceback (most recent call last):
ERROR 05-14 10:00:05 [async_llm.py:420]   File "vllm/v1/engine/async_llm.py", line 379, in \
output_handler
ERROR 05-14 10:00:05 [async_llm.py:420] vllm.v1.engine.exceptions.EngineDeadError: EngineCore \
encountered an issue. See stack trace (above) for the root cause.
INFO 05-14 10:00:05 [launcher.py:80] Shutting down FastAPI HTTP server.
"""


def write_crash_log(path: str | Path, cause: str = CRASH_CAUSE) -> Path:
    """A vLLM-like server log: the engine's traceback ending in ``cause``, then the
    ``EngineDeadError`` every request sees after it."""
    p = Path(path)
    p.write_text(_CRASH_LOG.format(cause=cause))
    return p


class MockProcess:
    """The mock as a child process (``python tests/mock_openai.py``), for a server that dies:

    with MockProcess(tmp_path / "endpoint.json", log=log, ttft_s=0.1) as srv:
        ...  # run a consumer against srv.endpoint; srv.kill() mid-run
    """

    def __init__(self, endpoint: str | Path, *, timeout: float = 60.0, **options: object):
        self.endpoint = Path(endpoint)
        self.timeout = timeout
        self.argv = [sys.executable, str(Path(__file__).resolve()), "--endpoint", str(endpoint)]
        for key, value in options.items():
            if value is not None:
                self.argv += [f"--{key.replace('_', '-')}", str(value)]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> MockProcess:
        self.endpoint.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + self.timeout
        while not self.endpoint.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mock server did not start: {self.argv}")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a crash ends a server, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __exit__(self, *exc: object) -> None:
        self.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description="serve the mock until SIGTERM/SIGINT")
    ap.add_argument("--endpoint", required=True, help="endpoint file to write when listening")
    ap.add_argument("--ttft-s", type=float, default=0.0)
    ap.add_argument("--itl-s", type=float, default=0.0)
    ap.add_argument("--model", default="mock-model", help="served model name")
    ap.add_argument("--chat-answer", default="42", help="non-streamed chat answer")
    ap.add_argument("--log", default=None, help="server log named in the endpoint file")
    args = ap.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cfg = MockConfig(
        ttft_s=args.ttft_s,
        itl_s=args.itl_s,
        model=args.model,
        chat_answer=args.chat_answer,
        record=False,
    )
    with MockOpenAI(cfg) as srv:
        tmp = Path(args.endpoint).with_name(Path(args.endpoint).name + ".tmp")
        srv.write_endpoint(tmp, log=args.log)
        tmp.replace(args.endpoint)  # readers never see half a file
        print(f"mock listening on {srv.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
