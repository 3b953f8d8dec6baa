"""The server's own counters (vLLM's Prometheus ``/metrics``), read around a benchmark cell.

vLLM counts what a client cannot see: draft tokens proposed and accepted by speculative
decoding, prefix-cache lookups and hits, the tokens it generated. A benchmark reads the
counters before and after each cell (it holds the service's benchmark lock, so the
difference is its own traffic) and puts these columns in its CSV:

- ``server_output_tokens``: generated tokens (``vllm:generation_tokens``), the real output
  count beside the client's ``total_output_tokens``.
- ``spec_drafts``, ``spec_draft_tokens``, ``spec_accepted_tokens``
  (``vllm:spec_decode_num_drafts`` / ``_num_draft_tokens`` / ``_num_accepted_tokens``);
  ``spec_acceptance_rate`` = accepted / draft tokens; ``spec_mean_acceptance_length`` =
  1 + accepted / drafts (tokens per verification step, the bonus token included).
- ``prefix_cache_queries``, ``prefix_cache_hits`` (tokens looked up and found,
  ``vllm:prefix_cache_queries`` / ``_hits``); ``prefix_cache_hit_rate`` = hits / queries.

A counter the server does not expose (no speculative decoding, a server that is not vLLM,
no ``/metrics``) gives NaN. Standard library only.
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from collections.abc import Mapping

NAN = float("nan")
#: column -> vLLM counter (summed over its label sets, e.g. one per engine)
COUNTERS = {
    "server_output_tokens": "vllm:generation_tokens",
    "spec_drafts": "vllm:spec_decode_num_drafts",
    "spec_draft_tokens": "vllm:spec_decode_num_draft_tokens",
    "spec_accepted_tokens": "vllm:spec_decode_num_accepted_tokens",
    "prefix_cache_queries": "vllm:prefix_cache_queries",
    "prefix_cache_hits": "vllm:prefix_cache_hits",
}
COLUMNS = (
    "server_output_tokens",
    "spec_drafts",
    "spec_draft_tokens",
    "spec_accepted_tokens",
    "spec_acceptance_rate",
    "spec_mean_acceptance_length",
    "prefix_cache_queries",
    "prefix_cache_hits",
    "prefix_cache_hit_rate",
)
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)")


def parse(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {counter name without ``_total``: sum over label sets}
    for the counters in COUNTERS (``_created`` timestamps and other metrics ignored)."""
    wanted = set(COUNTERS.values())
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name = m[1].removesuffix("_total")
        if name not in wanted:
            continue
        try:
            value = float(m[3])
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def root_url(base_url: str) -> str:
    """http://host:port from an OpenAI base URL (…/v1)."""
    return re.sub(r"/v1/?$", "", base_url.rstrip("/"))


def scrape(base_url: str, timeout: float = 5.0) -> dict[str, float] | None:
    """The server's counters now; None when it has no readable /metrics."""
    try:
        with urllib.request.urlopen(f"{root_url(base_url)}/metrics", timeout=timeout) as resp:
            if resp.status != 200:
                return None
            return parse(resp.read().decode("utf-8", errors="replace"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 and math.isfinite(num) else NAN


def columns(
    before: Mapping[str, float] | None, after: Mapping[str, float] | None
) -> dict[str, float]:
    """The CSV columns of the counters' growth from ``before`` to ``after``."""

    def grew(column: str) -> float:
        name = COUNTERS[column]
        if before is None or after is None or name not in after:
            return NAN
        return after[name] - before.get(name, 0.0)

    out = {c: grew(c) for c in COUNTERS}
    out["spec_acceptance_rate"] = _ratio(out["spec_accepted_tokens"], out["spec_draft_tokens"])
    length = _ratio(out["spec_accepted_tokens"], out["spec_drafts"])
    out["spec_mean_acceptance_length"] = 1 + length if math.isfinite(length) else NAN
    out["prefix_cache_hit_rate"] = _ratio(out["prefix_cache_hits"], out["prefix_cache_queries"])
    return {c: out[c] for c in COLUMNS}


class CellCounters:
    """Reads the counters at the start and after each cell; ``add(row)`` puts the cell's
    columns in its row."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.last: dict[str, float] | None = None

    def start(self) -> None:
        self.last = scrape(self.base_url)

    def add(self, row: dict) -> None:
        now = scrape(self.base_url)
        row.update(columns(self.last, now))
        self.last = now
