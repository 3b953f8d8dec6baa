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
    return _read_csv(path, BENCH_REQUIRED, "llmbuild bench static")


def _read_csv(path: str | Path, required: Sequence[str], command: str) -> list[dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise UserError("benchmark CSV not found", path=p)
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise UserError(
            f"missing column(s) {', '.join(missing)}; expected a CSV from `{command}`",
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


# --- dynamic benchmarks: latency against the request rate --------------------------------

DYNAMIC_REQUIRED = (
    "request_rate",
    "p90_ttft_ms",
    "p90_tpot_ms",
    "p90_e2el_ms",
    "output_throughput",
)
DYNAMIC_OPTIONAL = ("median_ttft_ms", "median_tpot_ms", "achieved_request_rate", "failures")


@dataclass
class RateSeries:
    """One line in each panel of the dynamic plot: one run (CSV), its rows by request rate
    (``inf``, all at once, sorts last)."""

    label: str
    rate: list[float] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    valid: list[bool] = field(default_factory=list)

    @property
    def invalid(self) -> int:
        return sum(not v for v in self.valid)


def read_dynamic_csv(path: str | Path) -> list[dict[str, str]]:
    return _read_csv(path, DYNAMIC_REQUIRED, "llmbuild bench dynamic")


def rate_series(tables: Sequence[list[dict[str, str]]], labels: Sequence[str]) -> list[RateSeries]:
    out = []
    for rows, label in zip(tables, labels, strict=True):
        rows = sorted(rows, key=lambda r: _float(r["request_rate"]))
        s = RateSeries(label, [_float(r["request_rate"]) for r in rows])
        for col in DYNAMIC_REQUIRED[1:] + DYNAMIC_OPTIONAL:
            s.values[col] = [_float(r.get(col)) for r in rows]
        s.valid = [_valid(r.get("valid")) for r in rows]
        out.append(s)
    return out


# --- sweeps: throughput per user vs throughput, the Pareto front -------------------------


@dataclass(frozen=True)
class SweepPoint:
    """One benchmark cell of a sweep. ``per_user``: output tokens/s per concurrent request
    (output throughput over the concurrency, as ``vllm bench sweep plot_pareto`` divides by
    the user count); ``throughput``: output tokens/s of the service."""

    label: str
    concurrency: int
    input_len: int
    output_len: int
    per_user: float
    throughput: float
    valid: bool = True

    @property
    def name(self) -> str:
        return f"{self.label} c={self.concurrency}"


def sweep_points(tables: Sequence[list[dict[str, str]]], labels: Sequence[str]) -> list[SweepPoint]:
    out = []
    for rows, label in zip(tables, labels, strict=True):
        for r in rows:
            c = int(r["concurrency"])
            thr = _float(r["output_throughput"])
            out.append(
                SweepPoint(
                    label,
                    c,
                    int(r["input_len"]),
                    int(r["output_len"]),
                    thr / c if c > 0 else math.nan,
                    thr,
                    _valid(r.get("valid")),
                )
            )
    return out


def pareto_front(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """The points no other point beats on both throughput per user and throughput (a tie on
    both keeps the first), by throughput per user ascending. Invalid and NaN points are
    never on the front."""
    ok = [
        (i, p)
        for i, p in enumerate(points)
        if p.valid and math.isfinite(p.per_user) and math.isfinite(p.throughput)
    ]
    # highest per-user first; among equals the highest throughput, then the earliest
    ok.sort(key=lambda ip: (-ip[1].per_user, -ip[1].throughput, ip[0]))
    front: list[SweepPoint] = []
    best = -math.inf
    for _, p in ok:
        if p.throughput > best:
            front.append(p)
            best = p.throughput
    return sorted(front, key=lambda p: p.per_user)


def sweep_table(
    tables: Sequence[list[dict[str, str]]], labels: Sequence[str]
) -> tuple[list[str], list[dict[str, object]]]:
    """Every row of a sweep's CSVs with its coordinates (label, variant, setting, workload
    from ``variant/setting/workload`` labels), throughput per user and ``on_pareto_front``:
    (columns, rows)."""
    points = sweep_points(tables, labels)
    front = {id(p) for p in pareto_front(points)}
    columns = ["label", "variant", "setting", "workload", "output_throughput_per_user"]
    columns.append("on_pareto_front")
    rows: list[dict[str, object]] = []
    it = iter(points)
    for table, label in zip(tables, labels, strict=True):
        parts = label.split("/")
        coords = dict(zip(("variant", "setting", "workload"), parts + ["", "", ""], strict=False))
        for r in table:
            p = next(it)
            for col in r:
                if col not in columns:
                    columns.append(col)
            rows.append(
                {
                    "label": label,
                    **coords,
                    "output_throughput_per_user": p.per_user,
                    "on_pareto_front": id(p) in front,
                    **r,
                }
            )
    return columns, rows
