"""Ask Linux for AMX tile data in every Python process of a CPU vLLM service.

On x86 Linux a process must request AMX state (arch_prctl ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA) before its first AMX instruction; without it the instruction raises
SIGILL. vLLM 0.32's CPU kernels (the bf16 attention ``cpu_attention_with_kv_cache``, the int8
W8A8 and int4 GEMMs) execute AMX instructions without asking, so on a kernel where nothing
else asked first the worker dies with exit code -4 at the first request (seen on a 2-core
KVM guest with amx_tile: every bf16 service died, float32 ones lived). vLLM starts its
engine and workers as new interpreters, which do not inherit the permission (exec clears
it), so ``llmbuild serve`` puts this directory on the server's PYTHONPATH and each
interpreter asks at start-up; an engine forked from serve/boot.py's fork server (itself a new
interpreter that asked) inherits it, as fork keeps it. Harmless where AMX is absent (the call
fails and is ignored).
"""

import ctypes
import platform

if platform.machine() == "x86_64":
    try:
        # syscall(SYS_arch_prctl = 158, ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18)
        ctypes.CDLL(None, use_errno=True).syscall(158, 0x1023, 18)
    except (OSError, AttributeError):
        pass
