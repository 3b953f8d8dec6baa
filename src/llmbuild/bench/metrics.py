"""Benchmark metrics: a pure function of request records and the wall-clock duration.

This docstring is the one definition of every number in a benchmark CSV (static and dynamic).
Names follow vLLM's ``benchmark_serving`` / ``vllm bench serve``, so rows line up with it:
``request_throughput``, ``output_throughput``, ``total_token_throughput``, ``mean_ttft_ms``,
``median_ttft_ms``, ``std_ttft_ms``, ``p90_ttft_ms``, ``p99_ttft_ms`` and the same for
``tpot``, ``itl`` and ``e2el``.

Latencies (successful requests only; failures are counted in ``failed``), all in ms:

- TTFT: from just before the request is written (its JSON body already serialized) to the
  first streamed chunk that carries output (a chat chunk that only announces the assistant
  role does not).
- TPOT, per request: ``(latency - ttft) / (output_tokens - 1)``, the decode time per token
  excluding the first; undefined (left out) for 1-token outputs. Its mean/percentiles are
  over requests, each request counting once (vLLM's definition; perf_analyzer's "inter-token
  latency" averaged over tokens is ITL below).
- ITL: every gap between consecutive output chunks, pooled over all requests. With
  speculative decoding a chunk can carry several tokens: ITL is then per chunk, TPOT per
  token.
- E2EL: request latency, send to last output chunk.
- ``output_tokens``: the server's ``usage.completion_tokens`` from the stream when it sends
  one (``output_tokens_source`` = ``usage``), else the number of output chunks (``chunks``).
- Percentiles interpolate linearly between order statistics (numpy's default); std is the
  population standard deviation (ddof=0). A statistic of no samples is NaN.

Throughput, over the cell's wall time ``duration_s`` (first send to last completion):

- ``request_throughput``: completed requests/s; ``input_throughput``, ``output_throughput``,
  ``total_token_throughput``: prompt tokens (the client's count), output tokens, both, per
  second, of completed requests only.
- Goodput: ``request_goodput`` = completed requests/s that meet every SLO given
  (``--slo-ttft-ms``, ``--slo-tpot-ms``, ``--slo-e2el-ms``); a 1-token request has no TPOT
  and meets any TPOT SLO. ``slo_attainment`` is that count over all requests sent. NaN
  when no SLO is given.

Validity, in every row (``validity()``), so a row that measured the client or a broken
server says so:

- ``target_request_rate``: the rate asked for (dynamic; NaN for the closed-loop static
  benchmark). ``achieved_request_rate``: requests sent per second, ``n / (time of the last
  send since the cell started)`` for dynamic cells, ``n / duration_s`` for static ones.
- ``successes``, ``failures``, ``first_error`` (one line): a failure is any request without
  a complete stream (HTTP error, error event, transport error, timeout, a stream cut before
  ``data: [DONE]``), recorded, never raised.
- ``mean_sched_lag_ms``, ``p99_sched_lag_ms``, ``max_sched_lag_ms``: how late the client
  sent requests versus when it was free to: ``sent - max(scheduled, released)``, where a
  request is released when a ``--max-concurrency`` slot frees (static: when its round
  starts). ``mean_queue_wait_ms``: time requests waited for such a slot (intended, not lag).
- ``max_in_flight``: the most requests open at once, from the records' send and end times
  (shows a concurrency cap, the client's or a proxy's, that the target rate ran into).
- ``too_few_for_p99``: fewer than 100 completed requests, so p99 is at most the max of a
  handful of samples.
- ``output_len_mismatch``: completed requests whose output token count differs from the
  forced length (natural mode: exceeds the cap); ``prompt_len_mismatch``: completed requests
  whose server prompt count differs from the client's (completions API only: chat adds a
  template); ``output_tokens_source``: ``usage``, ``chunks`` or both;
  ``mean_tokens_per_chunk``: output tokens over output chunks (above 1 with speculative
  decoding or server-side batching of the stream).

The gate columns, last in every row (``mark_validity()``, set by ``llmbuild bench`` from its
``--min-rate-fraction R``, ``--max-lag-ms L`` and ``--max-failed-fraction F``):

- ``valid``: ``True`` when the row measured the service under the load it names, ``False``
  when any of these holds: a dynamic row's ``achieved_request_rate`` is below
  ``R x target_request_rate`` (not applicable to rate ``inf`` nor to static rows, whose
  target is NaN); ``p99_sched_lag_ms`` exceeds ``L`` (any row); ``failures`` over requests
  sent exceeds ``F`` (any row).
- ``invalid_reason``: empty for a valid row, else one short line with the figures of every
  reason, ``; ``-separated, e.g. ``achieved 151.2 of target 200 req/s (< 0.95 x target);
  client lag p99 130.50 ms > 100 ms``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

from llmbuild.bench.records import RequestRecord
from llmbuild.errors import UserError
from llmbuild.schema import default

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


# --- validity -------------------------------------------------------------------------------

VALIDITY_COLUMNS = (
    "target_request_rate",
    "achieved_request_rate",
    "successes",
    "failures",
    "first_error",
    "mean_sched_lag_ms",
    "p99_sched_lag_ms",
    "max_sched_lag_ms",
    "mean_queue_wait_ms",
    "max_in_flight",
    "too_few_for_p99",
    "output_len_mismatch",
    "prompt_len_mismatch",
    "output_tokens_source",
    "mean_tokens_per_chunk",
)


def max_in_flight(records: Sequence[RequestRecord]) -> int:
    """The most requests open at once (send to end), from the records' own times."""
    events = []
    for r in records:
        events.append((r.start_time, 1))
        events.append((r.start_time + max(r.latency, 0.0), -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


def validity(
    records: Sequence[RequestRecord],
    *,
    target_rate: float = NAN,
    achieved_rate: float = NAN,
    forced_output: bool = True,
    check_prompt_len: bool = True,
) -> dict[str, float | int | str | bool]:
    """The validity columns of one cell (see the module docstring)."""
    ok = [r for r in records if r.success]
    failed = [r for r in records if not r.success]
    sources = sorted({r.output_tokens_source for r in ok})
    lag = sorted(r.sched_lag * 1000 for r in records)
    if forced_output:
        out_bad = sum(1 for r in ok if r.output_tokens != r.output_len)
    else:
        out_bad = sum(1 for r in ok if r.output_tokens > r.output_len)
    prompt_bad: int | float = (
        sum(
            1
            for r in ok
            if r.server_prompt_tokens is not None and r.server_prompt_tokens != r.prompt_len
        )
        if check_prompt_len
        else NAN
    )
    chunks = sum(r.chunks for r in ok)
    return {
        "target_request_rate": target_rate,
        "achieved_request_rate": achieved_rate,
        "successes": len(ok),
        "failures": len(failed),
        "first_error": " ".join(failed[0].error.split()) if failed else "",
        "mean_sched_lag_ms": math.fsum(lag) / len(lag) if lag else NAN,
        "p99_sched_lag_ms": percentile(lag, 99),
        "max_sched_lag_ms": lag[-1] if lag else NAN,
        "mean_queue_wait_ms": (
            math.fsum(r.queue_wait for r in records) * 1000 / len(records) if records else NAN
        ),
        "max_in_flight": max_in_flight(records),
        "too_few_for_p99": len(ok) < P99_MIN_SAMPLES,
        "output_len_mismatch": out_bad,
        "prompt_len_mismatch": prompt_bad,
        "output_tokens_source": "+".join(sources),
        "mean_tokens_per_chunk": sum(r.output_tokens for r in ok) / chunks if chunks else NAN,
    }


# --- gate columns ---------------------------------------------------------------------------

GATE_COLUMNS = ("valid", "invalid_reason")


@dataclass(frozen=True)
class Limits:
    """When a row is valid (see the module docstring); the flags' names in the errors. The
    defaults are the config schema's gates.* (the CLI's too)."""

    min_rate_fraction: float = field(default_factory=partial(default, "gates.min_rate_fraction"))
    max_lag_ms: float = field(default_factory=partial(default, "gates.max_lag_ms"))
    max_failed_fraction: float = field(
        default_factory=partial(default, "gates.max_failed_fraction")
    )

    def __post_init__(self) -> None:
        if not 0 <= self.min_rate_fraction <= 1:
            raise UserError(
                f"must be in [0, 1], got {self.min_rate_fraction}", field="--min-rate-fraction"
            )
        if not self.max_lag_ms >= 0:
            raise UserError(f"must be >= 0 ms, got {self.max_lag_ms}", field="--max-lag-ms")
        if not 0 <= self.max_failed_fraction <= 1:
            raise UserError(
                f"must be in [0, 1], got {self.max_failed_fraction}", field="--max-failed-fraction"
            )


def invalid_reasons(row: dict, limits: Limits) -> list[str]:
    """Why a row (with its validity columns) is invalid under ``limits``; empty when valid."""
    reasons = []
    target = float(row.get("target_request_rate", NAN))
    achieved = float(row.get("achieved_request_rate", NAN))
    if math.isfinite(target) and target > 0 and not achieved >= limits.min_rate_fraction * target:
        reasons.append(
            f"achieved {achieved:.4g} of target {target:g} req/s "
            f"(< {limits.min_rate_fraction:g} x target)"
        )
    lag = float(row.get("p99_sched_lag_ms", NAN))
    if lag > limits.max_lag_ms:
        reasons.append(f"client lag p99 {lag:.2f} ms > {limits.max_lag_ms:g} ms")
    failures = int(row.get("failures", 0))
    sent = int(row.get("successes", 0)) + failures
    if sent and failures / sent > limits.max_failed_fraction:
        reasons.append(
            f"{failures} of {sent} requests failed (allowed {limits.max_failed_fraction:g})"
        )
    return reasons


def mark_validity(rows: Sequence[dict], limits: Limits) -> list[dict]:
    """Set the gate columns (``valid``, ``invalid_reason``) of every row, last; returns rows."""
    for row in rows:
        reasons = invalid_reasons(row, limits)
        row["valid"] = not reasons
        row["invalid_reason"] = "; ".join(reasons)
    return list(rows)
