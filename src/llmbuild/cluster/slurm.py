"""Planning checks against the Slurm cluster the graph is submitted to: the partition the
profile names exists, and has the nodes training asks for. One line each, before any job."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

from llmbuild.errors import UserError

Sinfo = Callable[[], str]


def _sinfo() -> str:
    proc = subprocess.run(
        ["sinfo", "-h", "-a", "-o", "%R %D"], capture_output=True, text=True, timeout=60
    )
    if proc.returncode:
        raise UserError(f"sinfo failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def partitions(text: str) -> dict[str, int]:
    """{partition: node count} from `sinfo -h -a -o "%R %D"` (a line per partition state)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = out.get(parts[0], 0) + int(parts[1])
    return out


def check_partition(
    partition: str, nodes: int, profile: str, source: str, sinfo: Sinfo | None = None
) -> None:
    """The profile's partition exists and has at least ``nodes`` nodes (train.nodes)."""
    if sinfo is None:
        if shutil.which("sinfo") is None:
            raise UserError(
                f"slurm_partition {partition!r} is set but sinfo is not on PATH; submit "
                "from a Slurm login node",
                path=profile,
                field="default-resources.slurm_partition",
            )
        sinfo = _sinfo
    known = partitions(sinfo())
    if partition not in known:
        raise UserError(
            f"partition {partition!r} does not exist on this cluster (sinfo lists: "
            f"{', '.join(sorted(known)) or 'none'}); set slurm_partition to one of them",
            path=profile,
            field="default-resources.slurm_partition",
        )
    if nodes > known[partition]:
        raise UserError(
            f"{nodes} nodes asked but partition {partition!r} has {known[partition]}; lower "
            "train.nodes or set a bigger partition for the train rule (set-resources)",
            path=source,
            field="train.nodes",
        )


def requested_partition(
    default_args: list[str], overwrite: dict, rule: str = "train"
) -> str | None:
    """The slurm_partition a rule's jobs ask for: its set-resources entry, else the
    default-resources one (Snakemake's resource settings), else None (not a Slurm profile)."""
    res = (overwrite or {}).get(rule, {}).get("slurm_partition")
    raw = getattr(res, "raw", res)
    if raw is not None:
        return str(raw).strip("'\"")
    for arg in default_args or []:
        name, _, value = str(arg).partition("=")
        if name.strip() == "slurm_partition":
            return value.strip().strip("'\"")
    return None


def profile_name(argv: list[str], env: dict[str, str]) -> str:
    """The profile named on the command line (or $SNAKEMAKE_PROFILE), for error lines."""
    for i, arg in enumerate(argv):
        if arg == "--profile" and i + 1 < len(argv):
            return argv[i + 1].rstrip("/") + "/config.yaml"
        if arg.startswith("--profile="):
            return arg.split("=", 1)[1].rstrip("/") + "/config.yaml"
    return env.get("SNAKEMAKE_PROFILE", "the profile")
