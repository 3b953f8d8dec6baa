"""The gates of a service's consumers (``llmbuild eval accuracy``, ``llmbuild bench``).

After its run a consumer checks the service it measured: more failed requests than
``--max-failed-fraction`` allows, a service process (the endpoint file's ``pid``) that is gone,
or an endpoint that says ``stopped`` make it fail with one line naming the variant, the figures
and the server log's root-cause line, and write nothing that looks finished. Its outputs are
``Staged``: written under temporary names beside their final paths and renamed into place only
when every gate passed; otherwise moved to ``--keep-on-failure DIR`` for diagnosis, or removed.

A benchmark also judges its rows (``bench_verdict``, from the gate columns of
``llmbuild.bench.metrics``). Standard library only: no aiohttp, so evaluation imports it too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from llmbuild.errors import UserError
from llmbuild.gates.verdict import Verdict, judge

MAX_QUOTE = 300


def one_line(text: str, limit: int = MAX_QUOTE) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def check_fraction(value: float, flag: str) -> float:
    if not 0 <= value <= 1:
        raise UserError(f"must be in [0, 1], got {value}", field=flag)
    return value


def check_keep_dir(path: str | None) -> Path | None:
    """``--keep-on-failure``: a directory (made when needed), checked before the run."""
    if path is None:
        return None
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError("exists and is not a directory", path=p, field="--keep-on-failure")
    return p


# --- the service ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """The service as its consumer sees it after the run (None: not known, e.g. --base-url)."""

    variant: str
    pid: int | None = None
    alive: bool | None = None
    state: str | None = None
    log: str | None = None

    @property
    def down(self) -> str:
        """Why the service is down ("" when it is not known to be)."""
        if self.alive is False:
            return f"service process {self.pid} is gone"
        if self.state == "stopped":
            return "the endpoint file says stopped"
        return ""


def service_after_run(endpoint_path: str | None, info: Any, variant: str) -> Service:
    """Read the endpoint file again (its state and log may have changed) and look at the
    process it named when the run started. Without an endpoint file: only the variant."""
    from llmbuild.serve.endpoint import pid_alive, read_endpoint

    if not endpoint_path or info is None:
        return Service(variant)
    state, log = info.state, info.log
    if Path(endpoint_path).is_file():
        with contextlib.suppress(UserError):
            now = read_endpoint(endpoint_path)
            state, log = now.state, now.log or log
    else:
        state = "stopped"  # the service removed its endpoint file: it has ended
    return Service(variant, pid=info.pid, alive=pid_alive(info.pid), state=state, log=log)


def server_root_cause(service: Service) -> str | None:
    from llmbuild.serve.rootcause import log_root_cause

    cause = log_root_cause(service.log)
    return one_line(cause) if cause else None


def service_verdict(
    service: Service, failed: int, sent: int, max_failed_fraction: float
) -> Verdict:
    """``service_requests``: failed requests within the allowed fraction, the service up."""
    fraction = failed / sent if sent else 0.0
    down = service.down
    ok = fraction <= max_failed_fraction and not down
    detail = f"{failed} of {sent} requests failed (allowed {max_failed_fraction:g})"
    if down:
        detail += f", {down}"
    elif service.alive:
        detail += f", service process {service.pid} alive"
    return Verdict(
        gate="service_requests",
        subject=service.variant,
        status=judge(ok),
        metric="failed fraction",
        figure=round(fraction, 6),
        threshold=max_failed_fraction,
        detail=detail,
        figures={
            "failed": failed,
            "sent": sent,
            "service_pid": service.pid,
            "service_alive": service.alive,
            "endpoint_state": service.state,
            "server_log": service.log,
        },
    )


def failure_line(
    verdict: Verdict, service: Service, first_error: str, kept: Sequence[Path], what: str
) -> str:
    """The one line of a failed service gate: variant, figures, root cause, log, kept files."""
    cause = server_root_cause(service)
    if cause:
        quote = f"root cause (server log): {cause}"
    elif first_error:
        quote = f"first request error: {one_line(first_error)}"
    else:
        quote = "no root cause in the server log and no request error"
    log = f"server log {service.log}" if service.log else "no server log in the endpoint file"
    return (
        f"{service.variant}: service gate failed in {what}: {verdict.detail}; {quote}; {log}; "
        + _kept(kept)
    )


def _kept(kept: Sequence[Path]) -> str:
    if not kept:
        return "nothing kept (add --keep-on-failure DIR to keep the records)"
    return "kept for diagnosis: " + ", ".join(str(p) for p in kept)


# --- benchmark rows -------------------------------------------------------------------------


def row_label(row: dict) -> str:
    if "request_rate" in row:
        return f"rate {float(row['request_rate']):g} req/s"
    return f"c={row.get('concurrency')} in={row.get('input_len')} out={row.get('output_len')}"


def _worst(values: list[float], pick: Any) -> float | None:
    vals = [v for v in values if not math.isnan(v)]
    return pick(vals) if vals else None


def bench_verdict(
    rows: Sequence[dict],
    *,
    subject: str,
    mode: str,
    min_rate_fraction: float,
    max_lag_ms: float,
    max_failed_fraction: float,
) -> Verdict:
    """``bench_validity``: every row valid (gate columns set), with the worst figures."""
    invalid = [r for r in rows if not r["valid"]]
    ratios = [
        float(r["achieved_request_rate"]) / float(r["target_request_rate"])
        for r in rows
        if math.isfinite(float(r["target_request_rate"])) and float(r["target_request_rate"]) > 0
    ]
    lags = [float(r["p99_sched_lag_ms"]) for r in rows]
    sent = [int(r["successes"]) + int(r["failures"]) for r in rows]
    fails = [int(r["failures"]) / n if n else 0.0 for r, n in zip(rows, sent, strict=True)]
    worst_ratio, worst_lag = _worst(ratios, min), _worst(lags, max)
    worst_fail = _worst(fails, max)
    if invalid:
        detail = f"{len(invalid)} of {len(rows)} rows invalid: " + " | ".join(
            f"{row_label(r)}: {r['invalid_reason']}" for r in invalid
        )
    else:
        parts = [f"all {len(rows)} rows valid"]
        if worst_ratio is not None:
            parts.append(f"worst achieved rate {worst_ratio:.3f} x target")
        if worst_lag is not None:
            parts.append(f"worst client lag p99 {worst_lag:.2f} ms")
        parts.append(f"{sum(int(r['failures']) for r in rows)} of {sum(sent)} requests failed")
        detail = ", ".join(parts)
    return Verdict(
        gate="bench_validity",
        subject=subject,
        status=judge(not invalid, mode),
        metric="invalid rows",
        figure=len(invalid),
        threshold=0,
        detail=detail,
        figures={
            "rows": len(rows),
            "invalid_rows": len(invalid),
            "worst_rate_fraction": worst_ratio,
            "worst_p99_sched_lag_ms": worst_lag,
            "worst_failed_fraction": worst_fail,
            "failed_requests": sum(int(r["failures"]) for r in rows),
            "requests_sent": sum(sent),
            "min_rate_fraction": min_rate_fraction,
            "max_lag_ms": max_lag_ms,
            "max_failed_fraction": max_failed_fraction,
            "gate_mode": mode,
        },
    )


def invalid_line(verdict: Verdict, kept: Sequence[Path]) -> str:
    """The one line of a failed validity gate (fail mode)."""
    return (
        f"{verdict.subject}: benchmark invalid: {verdict.detail}; "
        + _kept(kept)
        + "; rerun on a quieter client, or --gate-mode warn to write the rows marked invalid"
    )


# --- outputs written only when the gates pass -----------------------------------------------


class Staged:
    """Output files written beside their final paths under temporary names.

    ``publish()`` renames them into place (after every gate passed); ``keep(dir)`` moves them to
    a diagnosis directory under their final names; leaving the ``with`` block removes whatever
    was neither, so a failed or killed run never leaves a file that looks finished."""

    def __init__(self) -> None:
        self._tmp: dict[Path, Path] = {}

    def path(self, final: str | os.PathLike[str]) -> Path:
        final = Path(final)
        if final not in self._tmp:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
            os.close(fd)
            self._tmp[final] = Path(name)
        return self._tmp[final]

    def open(self, final: str | os.PathLike[str], mode: str = "w") -> IO[Any]:
        return open(self.path(final), mode)

    def write_text(self, final: str | os.PathLike[str], text: str) -> None:
        self.path(final).write_text(text)

    def publish(self) -> None:
        for final, tmp in list(self._tmp.items()):
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
            del self._tmp[final]

    def keep(self, directory: str | os.PathLike[str] | None) -> list[Path]:
        """Move the staged files to ``directory`` (None: keep nothing); their new paths."""
        if directory is None:
            return []
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        kept = []
        for final, tmp in list(self._tmp.items()):
            os.chmod(tmp, 0o644)
            dest = d / final.name
            shutil.move(str(tmp), dest)
            del self._tmp[final]
            kept.append(dest.resolve())
        return kept

    def discard(self) -> None:
        for tmp in self._tmp.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._tmp.clear()

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def keep_verdict(directory: Path | None, name: str, verdict: Verdict) -> Path | None:
    """The failed verdict beside the kept files (not at the --verdict path: nothing passed)."""
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(json.dumps(verdict.as_dict(), indent=2) + "\n")
    return path.resolve()
