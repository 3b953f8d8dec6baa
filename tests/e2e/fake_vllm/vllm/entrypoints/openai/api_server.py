"""`python -m vllm.entrypoints.openai.api_server --host H --port P ...`, standard library only:
answers /health, and at the first completion request prints the engine traceback a real vLLM
prints when a kernel refuses its input (the W8A8 kernel of an AMX CPU given float32), then the
EngineDeadError every request sees after it, and exits as vLLM's server does."""

from __future__ import annotations

import argparse
import http.server
import os
import sys

CAUSE = "RuntimeError: int8_scaled_mm_with_quant: expect A to be bfloat16 or half"
_E = "(EngineCore_DP0 pid={pid}) ERROR [core.py:1512] "
TRACE = "\n".join(
    [
        _E + "EngineCore encountered a fatal error.",
        _E + "Traceback (most recent call last):",
        _E + '  File "vllm/v1/engine/core.py", line 1503, in run_engine_core',
        _E + '  File "vllm/model_executor/kernels/linear/scaled_mm/cpu.py", line 219',
        _E + "{cause}",
        "ERROR [serving.py:310] vllm.v1.engine.exceptions.EngineDeadError: EngineCore "
        "encountered an issue. See stack trace (above) for the root cause.",
        "INFO: Shutting down",
    ]
)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        print(TRACE.format(pid=os.getpid(), cause=CAUSE), flush=True)
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b'{"error": "EngineDeadError"}')
        self.wfile.flush()
        os._exit(1)

    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args, _ = p.parse_known_args()
    print(f"INFO fake vLLM on {args.host}:{args.port}", flush=True)
    http.server.ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
