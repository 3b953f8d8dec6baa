"""Gate verdicts: one small JSON file per proof, with its provenance beside it.

    {"gate": "parity", "subject": "base hf2mg", "status": "pass", "metric": "max |logit diff|",
     "figure": 3.1e-06, "threshold": 1e-05, "detail": "...", "figures": {...}}

``status`` is ``pass``, ``fail``, ``warn`` (failed, but the gate runs in warn mode: the result
is marked invalid, not withheld) or ``skipped`` (the gate is off; ``detail`` says why). Only
the standard library is used, so any environment can write and read verdicts.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmbuild.atomic import atomic_file
from llmbuild.errors import UserError

STATUSES = ("pass", "fail", "warn", "skipped")
MODES = ("fail", "warn")


def _finite_or_none(x: Any) -> Any:
    """JSON has no NaN/inf: such figures are written as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass(frozen=True)
class Verdict:
    gate: str
    subject: str
    status: str
    metric: str
    figure: float | None
    threshold: float | None
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown gate status {self.status!r}; expected one of {STATUSES}")

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def line(self) -> str:
        """One line: gate, subject, status, figure against threshold, detail."""
        fig = "n/a" if self.figure is None else f"{self.figure:.4g}"
        thr = "" if self.threshold is None else f" (threshold {self.threshold:.4g})"
        head = f"{self.gate} gate {self.status} for {self.subject}"
        return f"{head}: {self.metric} {fig}{thr}; {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["figure"] = _finite_or_none(d["figure"])
        d["threshold"] = _finite_or_none(d["threshold"])
        d["figures"] = {k: _finite_or_none(v) for k, v in d["figures"].items()}
        return d


def judge(ok: bool, mode: str = "fail") -> str:
    """The status of a check that passed (``ok``) or not, under ``mode`` (fail or warn)."""
    if mode not in MODES:
        raise UserError(f"unknown gate mode {mode!r}; use fail or warn", field="gates.mode")
    if ok:
        return "pass"
    return "warn" if mode == "warn" else "fail"


def read(path: str | os.PathLike[str]) -> Verdict:
    try:
        data = json.loads(Path(path).read_text())
        return Verdict(**data)
    except FileNotFoundError:
        raise UserError("verdict file not found", path=path) from None
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"not a gate verdict: {exc}", path=path) from None


def write(
    path: str | os.PathLike[str],
    verdict: Verdict,
    *,
    command: str,
    args: Mapping[str, object],
    inputs: Iterable[str | os.PathLike[str]] = (),
    started: float | None = None,
) -> Path:
    """Write ``verdict`` to ``path`` atomically, with ``<path>.provenance.json`` beside it."""
    from llmbuild import provenance

    with atomic_file(path) as fh:
        json.dump(verdict.as_dict(), fh, indent=2)
        fh.write("\n")
    provenance.write(
        path,
        command=command,
        args=args,
        inputs=list(inputs),
        started=started if started is not None else time.time(),
        extra={"gate": verdict.gate, "status": verdict.status},
    )
    return Path(path)


def finish(
    verdict: Verdict,
    output: str | os.PathLike[str] | None,
    *,
    command: str,
    args: Mapping[str, object],
    inputs: Iterable[str | os.PathLike[str]] = (),
    started: float | None = None,
) -> None:
    """The end of every gate: print the verdict; a failed one raises UserError (its JSON goes
    to stderr, i.e. the rule's log, and no output file is written); otherwise write it."""
    print(verdict.line(), flush=True)
    if verdict.failed:
        print(json.dumps(verdict.as_dict()), file=sys.stderr, flush=True)
        raise UserError(verdict.line())
    if output is not None:
        write(output, verdict, command=command, args=args, inputs=inputs, started=started)
