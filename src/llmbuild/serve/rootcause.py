"""The root-cause line of a failed service, read from its log.

When a vLLM server fails at a request, its log holds the real error (for example
``RuntimeError: int8_scaled_mm_with_quant: expect A to be bfloat16 or half`` inside the engine
core's traceback) followed by wrapper errors that only say the engine died
(``EngineDeadError: ... See stack trace (above) for the root cause.``). A consumer that fails
quotes the root cause, so the user reads the reason in one line instead of a log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

#: An exception line as Python prints it, anywhere in a log line (vLLM prefixes its log
#: lines with the process, level, time and source position).
_EXCEPTION = re.compile(
    r"(?<![\w.])((?:[A-Za-z_]\w*\.)*(?:[A-Z]\w*(?:Error|Exception)|KeyboardInterrupt|SystemExit))"
    r"(?::\s*(.*))?$"
)
#: Errors that only report that something else went wrong.
_WRAPPERS = frozenset(
    {
        "EngineDeadError",
        "EngineGenerateError",
        "CancelledError",
        "ClientDisconnectedError",
        "KeyboardInterrupt",
        "SystemExit",
        "BrokenPipeError",
        "ConnectionResetError",
    }
)
#: Lines without an exception that still name why a server stopped.
_FATAL = re.compile(
    r"(out of memory|killed|segmentation fault|core dumped|exited (?:by itself )?with code)",
    re.IGNORECASE,
)
TAIL_BYTES = 4 << 20


def root_cause(lines: Iterable[str]) -> str | None:
    """The line that says why the server failed, or None when the log says nothing.

    The last exception that is not a wrapper, written as ``Type: message``; without one, the
    last line that says the process was killed, crashed or exited."""
    cause: str | None = None
    wrapper: str | None = None
    fatal: str | None = None
    for raw in lines:
        line = raw.rstrip()
        m = _EXCEPTION.search(line)
        if m:
            name = m.group(1).rsplit(".", 1)[-1]
            text = f"{name}: {m.group(2)}" if m.group(2) else name
            if name in _WRAPPERS:
                wrapper = text
            else:
                cause = text
            continue
        if _FATAL.search(line):
            fatal = line.strip()
    return cause or fatal or wrapper


def read_tail(path: str | os.PathLike[str], limit: int = TAIL_BYTES) -> list[str]:
    """The last ``limit`` bytes of a log as lines (a missing file gives none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read()
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()


def log_root_cause(path: str | os.PathLike[str] | None) -> str | None:
    """``root_cause`` of the log at ``path``; None without a log."""
    if not path or not Path(path).is_file():
        return None
    return root_cause(read_tail(path))
