"""A CPU vLLM server's interpreters ask Linux for AMX state at start-up (serve/amx_site).

Without it vLLM 0.32's bf16 CPU attention dies of SIGILL at the first request on a kernel where
nothing else asked first; the server's engine and workers are new interpreters, so the
request must come from their start-up, through PYTHONPATH."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from llmbuild.serve.config import AMX_SITE, ServeConfig, child_env

pytestmark = pytest.mark.unit

# arch_prctl(ARCH_GET_XCOMP_PERM) into a u64: bit 18 is XFEATURE_XTILEDATA
PROBE = (
    "import ctypes; m = ctypes.c_uint64(0); "
    "ctypes.CDLL(None, use_errno=True).syscall(158, 0x1022, ctypes.byref(m)); "
    "print((m.value >> 18) & 1)"
)


def test_cpu_servers_get_the_site_directory_first():
    env = child_env(ServeConfig(model="/m"), {"PYTHONPATH": "/x"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(AMX_SITE), "/x"]
    assert (AMX_SITE / "sitecustomize.py").is_file()
    gpu = child_env(ServeConfig(model="/m", device="cuda"), {"PYTHONPATH": "/x"})
    assert gpu["PYTHONPATH"] == "/x"


def _amx_tile() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


@pytest.mark.skipif(
    platform.machine() != "x86_64" or not _amx_tile(), reason="needs an x86 CPU with AMX"
)
def test_a_new_interpreter_holds_amx_permission():
    def probe(env):
        out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
        return out.stdout.strip()

    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert probe(base) == "0"  # nobody asked: an AMX instruction would be SIGILL
    assert probe(child_env(ServeConfig(model="/m"), base)) == "1"
