"""On a CPU with AMX, every interpreter of the serving environment holds Linux's AMX state
permission from its start (envs/serve-cpu.txt's .pth line): vLLM's spawned workers run AMX
tile instructions in their bfloat16 attention without asking for it, and die with SIGILL at the
first request otherwise (seen on a Sapphire Rapids class VM)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_serve_e2e import _serve_python  # noqa: E402

# arch_prctl(ARCH_GET_XCOMP_PERM): the permitted extended-state features; bit 18 = XTILEDATA
PROBE = (
    "import ctypes; v = ctypes.c_ulong(0); "
    "ctypes.CDLL(None).syscall(158, 0x1022, ctypes.byref(v)); print(v.value >> 18 & 1)"
)


def _has_amx() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64" or not _has_amx(),
    reason="only an x86-64 Linux CPU with AMX has the permission to ask for",
)
def test_a_fresh_serving_interpreter_may_use_amx():
    python = _serve_python()
    out = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr[-2000:]
