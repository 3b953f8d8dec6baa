"""Devices of one server shared by concurrent jobs: each device job takes its own devices.

    python -m llmbuild.cluster.lease --device cuda|npu --count N -- COMMAND...

takes N devices no other job holds (an exclusive flock on <lock-dir>/<device>-<index>.lock
per device, waiting while all are taken), sets CUDA_VISIBLE_DEVICES or
ASCEND_RT_VISIBLE_DEVICES to them and execs COMMAND. The locks are open file descriptors that
COMMAND inherits, so they are released when it (and every process it started) exits, even
when killed. The pool is the server's devices (nvidia-smi / npu-smi), or the ones a scheduler
already assigned (the variable set by Slurm's gres): then only those are shared out.
Snakemake's resources (gpu / npu in the profile) keep the number of devices asked at once
within the pool; the lease makes sure the devices themselves are different.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from pathlib import Path

from llmbuild.cluster.check import VISIBLE, _run, parse_npu_smi, parse_nvidia_smi
from llmbuild.errors import UserError


def pool(device: str, env: dict[str, str]) -> list[int]:
    """The device indices jobs on this server may take."""
    assigned = env.get(VISIBLE[device], "").strip()
    if assigned:
        return [int(v) for v in assigned.split(",") if v.strip().isdigit()]
    if device == "cuda":
        text = _run(
            [
                "nvidia-smi",
                "--query-gpu=index,name,memory.total,driver_version",
                "--format=csv,noheader,nounits",
            ]
        )
        return [d["index"] for d in parse_nvidia_smi(text)]
    return [d["index"] for d in parse_npu_smi(_run(["npu-smi", "info"]))]


def acquire(
    device: str, count: int, devices: list[int], lock_dir: Path, timeout: float
) -> tuple[list[int], list[int]]:
    """(indices, lock fds) of ``count`` free devices; waits up to ``timeout`` seconds."""
    if count > len(devices):
        raise UserError(
            f"{count} {device} devices asked but this server has {len(devices)} "
            f"({','.join(map(str, devices)) or 'none'}); lower the job's parallel size",
            field=f"{device} devices",
        )
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        taken: list[tuple[int, int]] = []
        for index in devices:
            fd = os.open(lock_dir / f"{device}-{index}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            taken.append((index, fd))
            if len(taken) == count:
                return [i for i, _ in taken], [f for _, f in taken]
        for _, fd in taken:  # not enough free now: give back, wait, retry
            os.close(fd)
        if time.monotonic() > deadline:
            raise UserError(
                f"no {count} free {device} devices after {timeout:.0f}s (locks in {lock_dir}); "
                "the profile's resources allow more device jobs at once than the server has",
                field=f"{device} devices",
            )
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m llmbuild.cluster.lease", description=__doc__.splitlines()[0]
    )
    p.add_argument("--device", required=True, choices=["cuda", "npu"])
    p.add_argument("--count", type=int, required=True)
    p.add_argument(
        "--lock-dir", default=os.environ.get("LLMBUILD_LOCK_DIR", "/tmp/llmbuild-devices")
    )
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no command after --")
    try:
        devices = pool(args.device, dict(os.environ))
        ids, fds = acquire(args.device, args.count, devices, Path(args.lock_dir), args.timeout)
    except (UserError, RuntimeError, OSError) as exc:
        os.write(2, f"llmbuild cluster lease: error: {exc}\n".encode())
        return 2
    for fd in fds:
        os.set_inheritable(fd, True)
    os.environ[VISIBLE[args.device]] = ",".join(map(str, ids))
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
