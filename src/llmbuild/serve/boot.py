"""`python -m llmbuild.serve.boot FLAGS`: vLLM's OpenAI server (FLAGS are its own) with its
engine core forked from a preloaded fork server instead of spawned.

vLLM's CPU platform forces the ``spawn`` start method, so the engine core process imports
torch and vLLM all over again once the API server has finished importing them: about 9 s of
a ~22 s cold start on 2 cores, on the critical path of every service the graph starts
(benchmarks/serve_cold_start.py measures both ways). Here a multiprocessing fork server is
started first and imports the engine's modules while the API server imports its own (on two
cores at once), and vLLM's request for a spawn context is answered with the fork-server
context: the engine core is forked from a process that has imported vLLM and run nothing else.

Like a spawned child (and unlike a plain fork of the API server) such a child inherits no
threads, locks or sockets of the API server, and gets its target and arguments pickled; what
spawn gives beyond that is the parent's environment as it is at ``start()``, which vLLM edits
just before (OMP_NUM_THREADS, LD_PRELOAD, ...): the process object carries that environment
and the child applies it before the engine runs. Libraries named in LD_PRELOAD cannot be
loaded after the fact; a child that lacks one says so on its output (then serve with
``--no-preload-engine``). If the fork server cannot start, vLLM spawns as usual. The fork
server is a new interpreter, so it asks for AMX state at start-up like every interpreter of a
CPU service (amx_site/), and the kernel keeps that permission across fork.

Standard library only at module level: every child re-runs this module as ``__mp_main__``.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import runpy
import sys
from typing import Any

#: What the engine core imports, loaded by the fork server before the first fork (a module
#: missing from this vLLM is skipped by multiprocessing). llmbuild.serve: the package this
#: module lives in, which each child imports to re-run it.
PRELOAD = (
    "vllm.v1.engine.core",
    "vllm.v1.executor.uniproc_executor",
    "vllm.v1.worker.cpu_worker",
    "vllm.v1.worker.cpu_model_runner",
    "llmbuild.serve",
)


def _missing_preloads(names: str) -> list[str]:
    """The LD_PRELOAD libraries (``names``, as in the variable) not mapped in this process."""
    wanted = [n for n in names.replace(":", " ").split() if n]
    if not wanted:
        return []
    try:
        with open("/proc/self/maps") as fh:  # the kernel names each mapping by its real path
            mapped = {line.split()[-1] for line in fh if "/" in line}
    except OSError:
        return []
    return [n for n in wanted if os.path.realpath(n) not in mapped]


class EngineProcess(multiprocessing.context.ForkServerProcess):
    """A fork-server child that runs with its parent's environment as of ``start()``."""

    _start_env: dict[str, str] | None = None

    def start(self) -> None:
        self._start_env = dict(os.environ)
        super().start()

    def run(self) -> None:
        env = self._start_env
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
            missing = _missing_preloads(env.get("LD_PRELOAD", ""))
            if missing:
                print(
                    f"llmbuild.serve.boot: {self.name} runs without LD_PRELOAD "
                    f"{', '.join(missing)} (forked, not spawned); serve with "
                    "--no-preload-engine to load it",
                    file=sys.stderr,
                    flush=True,
                )
        super().run()


class EngineContext(multiprocessing.context.ForkServerContext):
    Process = EngineProcess  # type: ignore[assignment]


def route_spawn_to_forkserver(preload: tuple[str, ...] = PRELOAD) -> bool:
    """Start the fork server (importing ``preload``) and answer
    ``multiprocessing.get_context("spawn")`` with its context from now on; False (and
    nothing changed) if no fork server can start here."""
    from multiprocessing import forkserver

    try:
        multiprocessing.set_forkserver_preload(list(preload))
        forkserver.ensure_running()
    except (OSError, ValueError) as exc:
        print(f"llmbuild.serve.boot: no fork server ({exc}); vLLM spawns", file=sys.stderr)
        return False
    context = EngineContext()
    spawning = multiprocessing.get_context

    def get_context(method: str | None = None) -> Any:
        return context if method == "spawn" else spawning(method)

    multiprocessing.get_context = get_context  # type: ignore[assignment]
    return True


def main(argv: list[str] | None = None) -> None:
    from llmbuild.serve.config import SERVER_MODULE

    flags = sys.argv[1:] if argv is None else argv
    route_spawn_to_forkserver()
    sys.argv = [SERVER_MODULE, *flags]
    # __main__ stays this module: the children re-run it, not the server module
    runpy.run_module(SERVER_MODULE, run_name="__main__", alter_sys=False)


if __name__ == "__main__":
    main()
