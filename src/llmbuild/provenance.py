"""provenance.json: how an artifact was made (inputs' digests, arguments, versions, host, time)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

from llmbuild.atomic import atomic_file

PROVENANCE = "provenance.json"
_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "credential")
_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def path_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of a directory's (relative path, file digest) list.

    A directory's own provenance.json and hidden files are left out, so the digest is of
    the content alone and stays the same when only the record of how it was made changes.
    """
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        rel = f.relative_to(p).as_posix()
        if rel == PROVENANCE or any(part.startswith(".") for part in f.relative_to(p).parts):
            continue
        h.update(rel.encode() + b"\0" + file_digest(f).encode() + b"\n")
    return h.hexdigest()


def provenance_path(artifact: str | os.PathLike[str]) -> Path:
    a = Path(artifact)
    return a / PROVENANCE if a.is_dir() else a.with_name(a.name + "." + PROVENANCE)


def redact(args: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in args.items():
        if any(w in k.lower() for w in _SECRET_WORDS):
            out[k] = "<redacted>" if v else v
        else:
            out[k] = v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v)
    return out


def git_revision() -> dict[str, object]:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=here,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        return {"revision": rev, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"revision": None, "dirty": None}


def package_versions() -> dict[str, str]:
    pkgs: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            pkgs[name.lower()] = dist.version
    return dict(sorted(pkgs.items()))


def record(
    *,
    command: str,
    args: Mapping[str, object],
    inputs: Iterable[str | os.PathLike[str]],
    started: float,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    return {
        "command": command,
        "arguments": redact(args),
        "inputs": {str(p): path_digest(p) for p in inputs if p and Path(p).exists()},
        "code": git_revision(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "packages": package_versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
        "wall_seconds": round(time.time() - started, 3),
        **(dict(extra) if extra else {}),
    }


def write(
    artifact: str | os.PathLike[str],
    *,
    command: str,
    args: Mapping[str, object],
    inputs: Iterable[str | os.PathLike[str]] = (),
    started: float,
    extra: Mapping[str, object] | None = None,
    digest_output: bool = True,
) -> Path:
    """Write the provenance record of ``artifact`` (a directory or a file) beside or inside it."""
    rec = record(command=command, args=args, inputs=inputs, started=started, extra=extra)
    if digest_output:
        rec["output_digest"] = path_digest(artifact)
    dest = provenance_path(artifact)
    with atomic_file(dest) as fh:
        json.dump(rec, fh, indent=2, sort_keys=False)
        fh.write("\n")
    return dest
