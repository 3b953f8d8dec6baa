"""The CPU's features, as vLLM's CPU kernels choose by them: flags, model name, architecture.

``cpu_features`` reads /proc/cpuinfo (or given text, e.g. another machine's for `llmbuild serve
cpu --cpuinfo`). Standard library only.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path

_MACHINES = {"amd64": "x86_64", "i686": "x86", "i386": "x86", "arm64": "aarch64"}
_X86_VENDORS = ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls")


class CpuFeatures(frozenset):
    """The CPU's feature flags (lower case), with its model name and architecture."""

    model_name: str
    arch: str

    def __new__(cls, flags: Iterable[str] = (), *, model_name: str = "", arch: str = ""):
        self = super().__new__(cls, (f.lower() for f in flags))
        self.model_name = model_name or "unknown CPU"
        self.arch = arch or "unknown"
        return self

    def __reduce__(self):  # keep the attributes through copy/pickle
        return (_rebuild, (tuple(self), self.model_name, self.arch))

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "x86")

    @property
    def has_amx(self) -> bool:
        """AMX tiles: what torch.cpu._is_amx_tile_supported() reports (x86 only)."""
        return self.is_x86 and "amx_tile" in self

    @property
    def has_avx512_bf16(self) -> bool:
        return "avx512_bf16" in self

    @property
    def has_avx512(self) -> bool:
        return "avx512f" in self

    @property
    def has_bf16(self) -> bool:
        """Native bfloat16 arithmetic (x86 AVX-512/AMX bf16, Arm FEAT_BF16, POWER10 MMA)."""
        return bool(self & {"avx512_bf16", "amx_bf16", "avx_ne_convert", "bf16", "sve_bf16"})

    @property
    def has_fp16(self) -> bool:
        return bool(self & {"avx512_fp16", "amx_fp16", "fphp", "asimdhp"})

    def summary(self) -> dict[str, object]:
        return {
            "model": self.model_name,
            "arch": self.arch,
            "has_amx": self.has_amx,
            "has_avx512_bf16": self.has_avx512_bf16,
        }


def _rebuild(flags: tuple[str, ...], model_name: str, arch: str) -> CpuFeatures:
    return CpuFeatures(flags, model_name=model_name, arch=arch)


def cpu_features(cpuinfo: str | None = None, *, arch: str | None = None) -> CpuFeatures:
    """Flags, model name and architecture from /proc/cpuinfo text (this machine's if None).

    x86 lists ``flags``, aarch64 ``Features``; the architecture is ``arch`` if given, this
    machine's for its own cpuinfo, else inferred from the text.
    """
    own = cpuinfo is None
    if own:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    assert cpuinfo is not None
    flags: set[str] = set()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        value = value.strip()
        if key in ("flags", "features"):
            if not flags:  # the first processor speaks for all
                flags.update(value.split())
        elif key not in fields and value:
            fields[key] = value
    if arch is None:
        if own:
            machine = platform.machine().lower()
            arch = _MACHINES.get(machine, machine)
        elif "sse2" in flags or fields.get("vendor_id", "").startswith(_X86_VENDORS):
            arch = "x86_64"
        elif "cpu implementer" in fields or "asimd" in flags:
            arch = "aarch64"
        elif fields.get("cpu", "").upper().startswith("POWER"):
            arch = "ppc64le"
        elif "isa" in fields and fields["isa"].startswith("rv"):
            arch = "riscv64"
        elif "s390" in fields.get("vendor_id", "").lower():
            arch = "s390x"
        else:
            arch = "unknown"
    name = fields.get("model name") or fields.get("cpu") or fields.get("hardware") or ""
    if not name and "cpu implementer" in fields:
        name = f"Arm implementer {fields['cpu implementer']} part {fields.get('cpu part', '?')}"
    return CpuFeatures(flags, model_name=name, arch=arch)
