"""Periodic progress lines with rate and ETA, for the CLI layer (rules send them to logs)."""

from __future__ import annotations

import sys
import time


class RateLog:
    """Call ``update(done, extra)``; prints at most every ``every`` seconds, and at ``close``."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "items",
        every: float = 5.0,
        stream=sys.stderr,
    ):
        self.what, self.total, self.unit, self.every, self.stream = what, total, unit, every, stream
        self.start = self.last = time.monotonic()
        self.done = 0
        self.extra = ""

    def update(self, done: int, extra: str = "") -> None:
        self.done, self.extra = done, extra
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        msg = f"{self.what}: {self.done}"
        if self.total:
            msg += f"/{self.total}"
            if rate > 0:
                msg += f" ETA {max(self.total - self.done, 0) / rate:.0f}s"
        msg += f" {self.unit} ({rate:.1f} {self.unit}/s, {elapsed:.0f}s)"
        if self.extra:
            msg += f" {self.extra}"
        print(msg, file=self.stream, flush=True)

    def close(self) -> None:
        self._print(time.monotonic())
