"""Read benchmark CSVs and training logs into plain series (no matplotlib here)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmbuild.errors import UserError

BENCH_REQUIRED = (
    "concurrency",
    "input_len",
    "output_len",
    "p90_ttft_ms",
    "p90_tpot_ms",
    "output_throughput",
)
BENCH_OPTIONAL = ("request_throughput", "total_token_throughput", "slo_attainment", "failures")
# the validity gate's columns (``llmbuild.bench.metrics``); older CSVs lack them: all valid
_FALSE = ("false", "0", "no")


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _valid(text: str | None) -> bool:
    """A row's ``valid`` column; a CSV written before the column existed is valid."""
    return (text or "").strip().lower() not in _FALSE


@dataclass
class BenchSeries:
    """One line in each panel: one run (CSV) at one (input_len, output_len) pair.

    ``valid``/``invalid_reason``: per point, from the benchmark's gate columns (a row written
    under ``--gate-mode warn`` that measured the client or a failing server is invalid)."""

    label: str
    input_len: int
    output_len: int
    concurrency: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    valid: list[bool] = field(default_factory=list)
    invalid_reason: list[str] = field(default_factory=list)

    @property
    def invalid(self) -> int:
        return sum(not v for v in self.valid)

    @property
    def name(self) -> str:
        return f"{self.label} ({self.input_len}/{self.output_len})"


def parse_labels(labels: str | None, paths: Sequence[str | Path], flag: str) -> list[str]:
    if not labels:
        return [Path(p).stem for p in paths]
    out = [x.strip() for x in labels.split(",")]
    if len(out) != len(paths) or not all(out):
        raise UserError(
            f"give one non-empty label per file: {len(paths)} files, "
            f"{len(out)} labels in {labels!r}",
            field="--labels",
        )
    return out


def read_bench_csv(path: str | Path) -> list[dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise UserError("benchmark CSV not found", path=p)
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        header = reader.fieldnames or []
    missing = [c for c in BENCH_REQUIRED if c not in header]
    if missing:
        raise UserError(
            f"missing column(s) {', '.join(missing)}; expected a CSV from `llmbuild bench static`",
            path=p,
            field=missing[0],
        )
    if not rows:
        raise UserError("no rows", path=p)
    return rows


def bench_series(
    tables: Sequence[list[dict[str, str]]], labels: Sequence[str]
) -> list[BenchSeries]:
    """Series per (table, input/output pair), sorted by concurrency."""
    out = []
    for rows, label in zip(tables, labels, strict=True):
        groups: dict[tuple[int, int], list[dict[str, str]]] = {}
        for r in rows:
            groups.setdefault((int(r["input_len"]), int(r["output_len"])), []).append(r)
        for (i, o), grp in groups.items():
            grp = sorted(grp, key=lambda r: int(r["concurrency"]))
            s = BenchSeries(label, i, o, [int(r["concurrency"]) for r in grp])
            for col in BENCH_REQUIRED[3:] + BENCH_OPTIONAL:
                s.values[col] = [_float(r.get(col)) for r in grp]
            s.valid = [_valid(r.get("valid")) for r in grp]
            s.invalid_reason = [r.get("invalid_reason") or "" for r in grp]
            out.append(s)
    return out


@dataclass
class LossSeries:
    label: str
    phase: str
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)  # per device


def read_train_log(path: str | Path, label: str) -> list[LossSeries]:
    """Training log JSONL ({"step", "loss", "tokens_per_s_per_device", "phase", ...} per line), one
    series per phase; a malformed line is a UserError naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise UserError("training log not found", path=p)
    by_phase: dict[str, LossSeries] = {}
    with p.open(encoding="utf-8") as fh:
        for n, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
                step, loss = int(rec["step"]), float(rec["loss"])
            except json.JSONDecodeError as exc:
                raise UserError(f"not valid JSON ({exc.msg})", path=p, field=f"line {n}") from None
            except (KeyError, TypeError, ValueError) as exc:
                raise UserError(
                    f"needs numeric 'step' and 'loss' ({type(exc).__name__}: {exc})",
                    path=p,
                    field=f"line {n}",
                ) from None
            phase = str(rec.get("phase") or "train")
            s = by_phase.setdefault(phase, LossSeries(label, phase))
            s.step.append(step)
            s.loss.append(loss)
            # per device (a log from before that field: the total, one device's worth)
            rate = rec.get("tokens_per_s_per_device", rec.get("tokens_per_s"))
            s.tokens_per_s.append(_float(None if rate is None else str(rate)))
    if not by_phase:
        raise UserError("no log lines", path=p)
    return list(by_phase.values())
