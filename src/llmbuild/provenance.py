"""provenance.json: how an artifact was made (inputs' digests, arguments, versions, host, time)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

from llmbuild.atomic import atomic_file

PROVENANCE = "provenance.json"
_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "credential")
_CHUNK = 8 << 20
# Left out of a directory's digest: the record itself, and what tools put beside the content.
_NOT_CONTENT = (PROVENANCE, ".snakemake_timestamp")


def file_digest(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _content_files(p: Path) -> list[tuple[str, Path]]:
    out = []
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        rel = f.relative_to(p).as_posix()
        if rel in _NOT_CONTENT or rel.startswith(".snakemake"):
            continue
        out.append((rel, f))
    return out


def file_digests(
    path: str | os.PathLike[str], known: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Relative path -> sha256 of every content file of a directory (``{"": d}`` for a file)."""
    p = Path(path)
    if p.is_file():
        return {"": (known or {}).get("") or file_digest(p)}
    return {rel: (known or {}).get(rel) or file_digest(f) for rel, f in _content_files(p)}


def combine(files: Mapping[str, str]) -> str:
    """A directory's digest from its files' digests (what ``path_digest`` gives)."""
    if set(files) == {""}:
        return files[""]
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + files[rel].encode() + b"\n")
    return h.hexdigest()


def path_digest(path: str | os.PathLike[str], known: Mapping[str, str] | None = None) -> str:
    """sha256 of a file, or of a directory's (relative path, file digest) list.

    A directory's own provenance.json and Snakemake's marker files are left out, so the digest
    is of the content alone and stays the same when only the record of how it was made
    changes. ``known``: digests of some of the files (relative path -> hex), already computed
    while they were written, so they are not read again.
    """
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    h = hashlib.sha256()
    for rel, f in _content_files(p):
        digest = (known or {}).get(rel) or file_digest(f)
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


class _Stream:
    """The sha256 of a file being appended to, brought up to date from the page cache."""

    def __init__(self, path: Path) -> None:
        self.path, self.pos, self.h = path, 0, hashlib.sha256()
        self.fd = os.open(path, os.O_RDONLY)

    def advance(self, size: int) -> None:
        while self.pos < size:
            block = os.pread(self.fd, min(_CHUNK, size - self.pos), self.pos)
            if not block:
                break
            self.h.update(block)
            self.pos += len(block)

    def finish(self) -> str | None:
        """The digest, or None if the file changed in ways appending does not explain."""
        try:
            size = os.fstat(self.fd).st_size
            self.advance(size)
            return self.h.hexdigest() if self.pos == size else None
        finally:
            os.close(self.fd)


class Digester:
    """sha256 digests off the main thread, for commands that move gigabytes.

    ``inputs(paths)`` starts digesting inputs at once (reading them ahead also fills the page
    cache for the reads the command makes next); ``written(path, size)`` says a file being
    written has ``size`` bytes so far, and a second thread hashes the new bytes while the
    command goes on writing. ``output_digests(root)`` waits and gives what ``write(...,
    known=...)`` takes; ``input_digests()`` what ``write(..., input_digests=...)`` takes.
    hashlib releases the GIL on large buffers, so both threads run beside the main one.
    """

    def __init__(self) -> None:
        self._in_pool = ThreadPoolExecutor(1, thread_name_prefix="digest-in")
        self._out_pool = ThreadPoolExecutor(1, thread_name_prefix="digest-out")
        self._in: dict[str, Future[str]] = {}
        self._streams: dict[Path, _Stream] = {}

    def inputs(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        for p in paths:
            if p and Path(p).exists() and str(p) not in self._in:
                self._in[str(p)] = self._in_pool.submit(path_digest, p)

    def written(self, path: str | os.PathLike[str], size: int) -> None:
        path = Path(path)
        if path not in self._streams:  # called from the writing thread only
            self._streams[path] = _Stream(path)
        self._out_pool.submit(self._streams[path].advance, size)

    def input_digests(self) -> dict[str, str]:
        return {k: f.result() for k, f in self._in.items()}

    def output_digests(self, root: str | os.PathLike[str]) -> dict[str, str]:
        """Relative path (under ``root``) -> digest of every file reported by ``written``."""
        root = Path(root)
        done = {p: self._out_pool.submit(s.finish) for p, s in self._streams.items()}
        out = {}
        for p, fut in done.items():
            digest = fut.result()
            if digest is not None and p.is_relative_to(root):
                out[p.relative_to(root).as_posix()] = digest
        self._streams.clear()
        return out

    def close(self) -> None:
        for f in self._in.values():
            f.cancel()
        self._in_pool.shutdown(wait=True, cancel_futures=True)
        self._out_pool.shutdown(wait=True, cancel_futures=True)
        for s in self._streams.values():
            with contextlib.suppress(OSError):
                os.close(s.fd)
        self._streams.clear()

    def __enter__(self) -> Digester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def provenance_path(artifact: str | os.PathLike[str]) -> Path:
    a = Path(artifact)
    return a / PROVENANCE if a.is_dir() else a.with_name(a.name + "." + PROVENANCE)


# credentials in a URL (user:secret@host) and secret-looking query parameters
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")
_URL_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:[a-z_]*(?:token|secret|password|api_?key|key|sig|signature)[a-z_]*)=)[^&#\s]+"
)


def scrub(value: object) -> object:
    """``value`` with URL credentials and secret query parameters masked, and absolute paths
    inside the working directory made relative (a record must survive the tree moving)."""
    if isinstance(value, str):
        text = _URL_SECRET_QUERY.sub(r"\1<redacted>", _URL_CREDENTIALS.sub("<redacted>@", value))
        return relative(text)
    if isinstance(value, Mapping):
        return {str(k): scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    if isinstance(value, os.PathLike):
        return relative(os.fspath(value))
    return value


def relative(path: str) -> str:
    """``path`` relative to the working directory when it is an absolute path inside it."""
    if not path.startswith("/"):
        return path
    cwd = os.getcwd()
    if path == cwd:
        return "."
    if path.startswith(cwd.rstrip("/") + "/"):
        return os.path.relpath(path, cwd)
    return path


def redact(args: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in args.items():
        if k == "func":
            continue
        if any(w in k.lower() for w in _SECRET_WORDS):
            out[k] = "<redacted>" if v else v
        elif isinstance(v, (str, int, float, bool, type(None), list, tuple, os.PathLike)):
            out[k] = scrub(v)
        else:
            out[k] = str(v)
    return out


def source_digests() -> dict[str, str]:
    """sha256 of each llmbuild source file this process imported, by its path in the
    package (``llmbuild/quantize/cli.py``): the code that made the artifact."""
    root = Path(__file__).resolve().parent.parent
    out = {}
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if not (name == "llmbuild" or name.startswith("llmbuild.")) or not f:
            continue
        path = Path(f).resolve()
        if path.suffix == ".py" and path.is_relative_to(root) and path.is_file():
            out[path.relative_to(root).as_posix()] = file_digest(path)
    return dict(sorted(out.items()))


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
        # a package's private copies (setuptools/_vendor/...) are not the environment's
        if name and "_vendor" not in str(getattr(dist, "_path", "")):
            pkgs[name.lower()] = dist.version
    return dict(sorted(pkgs.items()))


def record(
    *,
    command: str,
    args: Mapping[str, object],
    inputs: Iterable[str | os.PathLike[str]],
    started: float,
    extra: Mapping[str, object] | None = None,
    input_digests: Mapping[str, str] | None = None,
) -> dict[str, object]:
    known = input_digests or {}
    return {
        "command": command,
        "arguments": redact(args),
        "inputs": {
            relative(os.fspath(p)): known.get(str(p)) or path_digest(p)
            for p in inputs
            if p and Path(p).exists()
        },
        "code": git_revision(),
        "source": source_digests(),
        "python": sys.version.split()[0],
        "executable": relative(sys.executable),
        "packages": package_versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
        "wall_seconds": round(time.time() - started, 3),
        **(scrub(dict(extra)) if extra else {}),  # type: ignore[dict-item]
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
    input_digests: Mapping[str, str] | None = None,
    known: Mapping[str, str] | None = None,
) -> Path:
    """Write the provenance record of ``artifact`` (a directory or a file) beside or inside it.

    ``input_digests`` (path -> digest) and ``known`` (relative path in the artifact -> digest)
    are digests a ``Digester`` already computed; anything else is hashed here."""
    rec = record(
        command=command,
        args=args,
        inputs=inputs,
        started=started,
        extra=extra,
        input_digests=input_digests,
    )
    if digest_output:
        files = file_digests(artifact, known)
        rec["output_digest"] = combine(files)
        if Path(artifact).is_dir():
            rec["output_files"] = files
    dest = provenance_path(artifact)
    with atomic_file(dest) as fh:
        json.dump(rec, fh, indent=2, sort_keys=False)
        fh.write("\n")
    return dest
