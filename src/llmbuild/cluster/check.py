"""The environment check a device job depends on: is the device this job needs on this node?

`llmbuild cluster check --device cuda|npu|cpu --output FILE` records what the node has (GPUs
from `nvidia-smi`, NPUs from `npu-smi info`, or the CPU's ISA flags, cores and memory) as
JSON, or stops with one line when the device is missing, so a job placed on the wrong node
fails at the check, in seconds, not an hour into its work. Pure functions over command output
and /proc text, plus one runner that calls the tools.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from typing import Any

from llmbuild.errors import UserError

# The ISA flags that decide kernels here (vLLM's CPU path, int8 matmuls, bf16).
ISA = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
VISIBLE = {"cuda": "CUDA_VISIBLE_DEVICES", "npu": "ASCEND_RT_VISIBLE_DEVICES"}
TOOL = {"cuda": "nvidia-smi", "npu": "npu-smi"}
FIX = "run device jobs where the device is (the profile's partition / gres) or set {key}: cpu"

Runner = Callable[[list[str]], str]


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}: {last[0]}")
    return proc.stdout


def cpu_facts(cpuinfo: str, meminfo: str, cores: int) -> dict[str, Any]:
    """ISA flags, model name, cores usable by this job and memory, from /proc text."""
    flags: set[str] = set()
    model = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key.strip() == "model name" and not model:
            model = value.strip()
    mem = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    return {
        "model": model or platform.processor(),
        "isa": [f for f in ISA if f in flags],
        "cores": cores,
        "mem_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
    }


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """Rows of `nvidia-smi --query-gpu=index,name,memory.total,driver_version
    --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4 and parts[0].isdigit():
            gpus.append(
                {
                    "index": int(parts[0]),
                    "name": parts[1],
                    "mem_mib": int(float(parts[2])),
                    "driver": parts[3],
                }
            )
    return gpus


_NPU_ROW = re.compile(r"^\|\s*(\d+)\s+(\S+)\s+\|\s*(OK|Warning|Alarm|Critical)\b", re.M)


def parse_npu_smi(text: str) -> list[dict[str, Any]]:
    """The NPUs of `npu-smi info`'s table: rows `| <id> <name> | <health> ...`."""
    return [
        {"index": int(m.group(1)), "name": m.group(2), "health": m.group(3)}
        for m in _NPU_ROW.finditer(text)
    ]


def check(
    device: str,
    key: str,
    run: Runner = _run,
    env: dict[str, str] | None = None,
    host: str | None = None,
) -> dict[str, Any]:
    """What this node has for ``device``; UserError (one line) when it lacks it."""
    env = dict(os.environ) if env is None else env
    host = host or socket.gethostname()
    facts: dict[str, Any] = {"host": host, "device": device}
    with open("/proc/cpuinfo") as c, open("/proc/meminfo") as m:
        facts["cpu"] = cpu_facts(c.read(), m.read(), len(os.sched_getaffinity(0)))
    if device == "cpu":
        return facts
    tool = TOOL[device]
    fix = FIX.format(key=key)
    if shutil.which(tool, path=env.get("PATH")) is None:
        raise UserError(f"no {device} device on node {host}: {tool} not found; {fix}", field=key)
    try:
        out = run(
            [
                tool,
                "--query-gpu=index,name,memory.total,driver_version",
                "--format=csv,noheader,nounits",
            ]
            if device == "cuda"
            else [tool, "info"]
        )
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(
            f"no usable {device} device on node {host}: {exc}; {fix}", field=key
        ) from None
    devices = parse_nvidia_smi(out) if device == "cuda" else parse_npu_smi(out)
    visible = env.get(VISIBLE[device])
    if visible is not None and visible.strip() != "":
        wanted = {int(v) for v in visible.split(",") if v.strip().isdigit()}
        devices = [d for d in devices if d["index"] in wanted]
    if not devices:
        shown = f" ({VISIBLE[device]}={visible})" if visible else ""
        raise UserError(
            f"no {device} device on node {host}: {tool} lists none{shown}; {fix}", field=key
        )
    facts["devices"] = devices
    facts[VISIBLE[device]] = visible
    return facts
