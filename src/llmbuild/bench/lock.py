"""One benchmark at a time per service: two benchmarks sharing a server measure each other.

The graph starts every consumer of a service together (a Snakemake service group runs its
jobs at once), so the static and dynamic benchmarks of one service would overlap. Each
benchmark holds an exclusive ``flock`` keyed by the service's base URL while it measures;
the second waits for the first. The lock lives in the system's temporary directory and is
released by the kernel if the holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def lock_path(base_url: str) -> Path:
    key = hashlib.sha256(base_url.rstrip("/").encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"llmbuild-bench-{key}.lock"


@contextlib.contextmanager
def service_lock(base_url: str, on_wait: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Hold the service's benchmark lock; ``on_wait(path)`` is called once if it is taken."""
    path = lock_path(base_url)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
