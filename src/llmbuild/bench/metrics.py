"""Benchmark metrics: a pure function of request records and the wall-clock duration.

Names follow vLLM's ``benchmark_serving``: ``request_throughput``, ``output_throughput``,
``total_token_throughput``, ``mean_ttft_ms``, ``median_ttft_ms``, ``std_ttft_ms``,
``p90_ttft_ms``, ``p99_ttft_ms`` and the same for ``tpot``, ``itl`` and ``e2el``.

Definitions (successful requests only; failures are counted in ``failed``):

- TTFT: time from sending the request to the first streamed chunk.
- TPOT, per request: ``(latency - ttft) / (output_tokens - 1)``, the decode time per token
  excluding the first; undefined (left out) for 1-token outputs.
- ITL: every gap between consecutive streamed chunks, pooled over all requests.
- E2EL: request latency, send to last chunk.
- Percentiles interpolate linearly between order statistics (numpy's default); std is the
  population standard deviation (ddof=0). A statistic of no samples is NaN.
- Goodput: successful requests per second that meet every given SLO; a 1-token request has no
  TPOT and meets any TPOT SLO. ``slo_attainment`` is that count over all requests sent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from llmbuild.bench.records import RequestRecord
from llmbuild.errors import UserError

NAN = float("nan")
PERCENTILES: tuple[int, ...] = (90, 99)
LATENCIES: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")
# completed requests under which a p99 is the max of too few samples to mean anything
P99_MIN_SAMPLES = 100


@dataclass(frozen=True)
class SLO:
    """Service-level objectives in milliseconds; None means no objective on that latency."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tpot_ms", "e2el_ms"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise UserError(
                    f"must be a positive number of ms, got {v}",
                    field=f"--slo-{name.replace('_', '-')}",
                )

    @property
    def empty(self) -> bool:
        return self.ttft_ms is None and self.tpot_ms is None and self.e2el_ms is None

    def met(self, rec: RequestRecord) -> bool:
        if not rec.success:
            return False
        if self.ttft_ms is not None and rec.ttft * 1000 > self.ttft_ms:
            return False
        tpot = rec.tpot
        if self.tpot_ms is not None and tpot is not None and tpot * 1000 > self.tpot_ms:
            return False
        return not (self.e2el_ms is not None and rec.latency * 1000 > self.e2el_ms)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics, as ``numpy.percentile`` by default."""
    n = len(sorted_values)
    if n == 0:
        return NAN
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(
    values: Sequence[float], name: str, percentiles: Sequence[int] = PERCENTILES
) -> dict[str, float]:
    """mean/median/std/pXX of ``values`` under vLLM's names ``mean_{name}_ms`` etc."""
    vals = sorted(values)
    n = len(vals)
    mean = math.fsum(vals) / n if n else NAN
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / n) if n else NAN
    out = {
        f"mean_{name}_ms": mean,
        f"median_{name}_ms": percentile(vals, 50),
        f"std_{name}_ms": std,
    }
    for p in percentiles:
        out[f"p{p:g}_{name}_ms"] = percentile(vals, p)
    return out


def latency_samples(records: Sequence[RequestRecord]) -> dict[str, list[float]]:
    """The samples, in ms, behind each latency statistic (successful requests only)."""
    ok = [r for r in records if r.success]
    tpots = [t * 1000 for r in ok if (t := r.tpot) is not None]
    return {
        "ttft": [r.ttft * 1000 for r in ok],
        "tpot": tpots,
        "itl": [g * 1000 for r in ok for g in r.itl],
        "e2el": [r.latency * 1000 for r in ok],
    }


def compute_metrics(
    records: Sequence[RequestRecord],
    duration_s: float,
    slo: SLO | None = None,
    percentiles: Sequence[int] = PERCENTILES,
) -> dict[str, float | int]:
    """All metrics of one benchmark cell, keys in a stable order (CSV columns)."""
    if not duration_s >= 0:
        raise UserError(f"duration must be >= 0 s, got {duration_s}", field="duration_s")
    ok = [r for r in records if r.success]
    completed, failed = len(ok), len(records) - len(ok)
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)

    def rate(x: float) -> float:
        return x / duration_s if duration_s > 0 else NAN

    if slo is None or slo.empty:
        goodput, attainment = NAN, NAN
    else:
        good = sum(1 for r in ok if slo.met(r))
        goodput = rate(good)
        attainment = good / len(records) if records else NAN
    out: dict[str, float | int] = {
        "completed": completed,
        "failed": failed,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "duration_s": duration_s,
        "request_throughput": rate(completed),
        "request_goodput": goodput,
        "slo_attainment": attainment,
        "input_throughput": rate(total_in),
        "output_throughput": rate(total_out),
        "total_token_throughput": rate(total_in + total_out),
    }
    samples = latency_samples(records)
    for name in LATENCIES:
        out.update(summarize(samples[name], name, percentiles))
    return out
