"""Serving: a vLLM OpenAI-compatible service as a build step, and how consumers wait for it.

`llmbuild.serve.endpoint` (standard library only) is what benchmark and evaluation steps
import; `llmbuild.serve.config` holds the knobs and builds the server's command line;
`llmbuild.serve.vllm` supervises the server.
"""

from llmbuild.serve.config import ServeConfig, build_argv
from llmbuild.serve.endpoint import Endpoint, read_endpoint, wait_ready
from llmbuild.serve.vllm import run_service

__all__ = [
    "Endpoint",
    "ServeConfig",
    "build_argv",
    "read_endpoint",
    "run_service",
    "wait_ready",
]
