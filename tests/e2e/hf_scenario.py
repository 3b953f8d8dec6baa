"""The hf-qwen2.5 scenario's build for the end-to-end tests, run beside the default's.

The default's graph keeps both cores busy until its models are trained and converted, and
then mostly waits on its vLLM services (a CPU engine computes on one thread) for minutes; the
scenario's build is one-threaded work too (interpreters importing torch, megatron and vLLM).
So in `make test` the scenario's build does not wait for the default's to end: `start(after)`
begins it in a thread once ``after`` exists (the default's converted SFT model) or once a test
asks for its `result`; its outputs are under results/qwen2.5-0.5b/, disjoint from the
default's, so the two Snakemake runs share the repository (the device check both read is made
before either starts). Timings of the scenario's benchmark are not asserted, only its validity
gate (rate and lag within gates.*).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAME = "qwen2.5-0.5b"
STAND_IN = ROOT / "results/models/qwen2.5"
CONFIGS = [
    "config/config.yaml",
    "config/scenarios/hf-qwen2.5.yaml",
    "config/scenarios/quick.yaml",
    "tests/e2e/bench-quantized.yaml",
]
POLL_S = 2.0
# The device check both graphs read: a graph that makes it holds Snakemake's output lock on it
# for its whole run, and the other graph (which reads it) could not start.
CHECK = ".envs/checks/cpu.json"

_STAND_IN_LOCK = threading.Lock()


def make_stand_in() -> Path:
    """results/models/qwen2.5: a random-weight Qwen2.5 with the family's real tokenizer and
    template, made by tests/families.py as the scenario's README says a user would."""
    with _STAND_IN_LOCK:
        if not (STAND_IN / "model.safetensors").is_file():
            python = ROOT / ".envs/train/bin/python"
            subprocess.run(
                [str(python), "tests/families.py", "--family", "qwen2.5", "--out", str(STAND_IN)],
                cwd=ROOT,
                check=True,
                timeout=600,
            )
    return STAND_IN


SNAKEMAKE = [sys.executable, "-m", "snakemake", "--profile", "profiles/local"]


def make_device_check() -> None:
    """The device check, made before either graph starts (see CHECK)."""
    cmd = [*SNAKEMAKE, CHECK]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def snakemake_cmd(*args: str) -> list[str]:
    """Snakemake on the scenario's configs."""
    return [*SNAKEMAKE, *args, "--configfile", *CONFIGS]


class Build:
    """The scenario's build in a thread: `start` (once), `result` (its CompletedProcess),
    `stop` (terminates a build still running, so nothing outlives the test session)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._go = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._stopped = False
        self._outcome: subprocess.CompletedProcess | BaseException | None = None

    def start(self, after: Path | None = None) -> None:
        """Begins the build (once): at once, or when ``after`` exists."""
        with self._lock:
            if after is None:
                self._go.set()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, args=(after,), name="hf-scenario", daemon=True
                )
                self._thread.start()

    def _run(self, after: Path | None) -> None:
        try:
            make_stand_in()  # one interpreter, while the default's graph starts its own
            while not (self._go.is_set() or (after is not None and after.exists())):
                self._go.wait(POLL_S)
            cmd = snakemake_cmd()
            with self._lock:
                if self._stopped:
                    raise RuntimeError("the hf scenario's build was stopped before it began")
                self._proc = subprocess.Popen(
                    cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            out, err = self._proc.communicate(timeout=3600)
            self._outcome = subprocess.CompletedProcess(cmd, self._proc.returncode, out, err)
        except BaseException as exc:  # handed to the test that waits for it
            self._outcome = exc

    def result(self) -> subprocess.CompletedProcess:
        self.start()
        assert self._thread is not None
        self._thread.join()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    def wait_if_started(self) -> None:
        """Waits for a build begun earlier in the session, now that it is wanted (another
        build of the same outputs would find them locked); one not begun is left to the
        caller."""
        if self._thread is not None:
            self._go.set()
            self._thread.join()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._go.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # Snakemake stops its jobs and services on SIGTERM
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=90)


BUILD = Build()
