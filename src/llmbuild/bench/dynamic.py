"""Dynamic benchmark: request-rate list x num-prompts per rate, open loop, over a dataset.

The seeds' ``benchmark_serving.py`` shape. For each rate, ``num_prompts`` requests from the
dataset are sent at seeded exponential inter-arrival times, whether or not earlier ones have
answered (optionally at most ``max_concurrency`` in flight). One CSV row per rate.

Arrival times: a Poisson process of the target rate conditioned on exactly ``n`` arrivals in
``n / rate`` seconds: ``n`` exponential gaps, scaled so that they sum to ``n / rate``
(the scaled gaps are distributed as the spacings of sorted uniform points, which is what a
Poisson process given its count is). Every cell therefore offers exactly its target rate,
and ``achieved_request_rate`` vs ``target_request_rate`` measures the client, not the dice.
A rate of ``inf`` sends everything at once. The schedule is absolute: a late request does not
delay the ones after it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import IO, Any

import numpy as np

from llmbuild.bench.client import Endpoint, Request, open_pool, prepare
from llmbuild.bench.datasets import Entry, assign_prompts
from llmbuild.bench.metrics import SLO, VALIDITY_COLUMNS, compute_metrics, validity
from llmbuild.bench.records import RequestRecord, RequestSpec
from llmbuild.bench.workload import ModelMix, Workload
from llmbuild.errors import UserError
from llmbuild.schema import default

CONFIG_COLUMNS = (
    "request_rate",
    "num_prompts",
    "max_concurrency",
    "dataset",
    "model",
    "api",
    "output_mode",
    "lora_mix",
    "mean_input_len",
    "mean_output_len",
)
EXTRA_VALIDITY_COLUMNS = ("reused_prompts",)
_ARRIVAL_STREAM, _MODEL_STREAM = 0xA221, 0x10AB


@dataclass(frozen=True)
class DynamicConfig:
    """The cells; the defaults of the fields a config key sets are the schema's."""

    rates: tuple[float, ...]
    num_prompts: tuple[int, ...]  # one per rate, or one for all
    seed: int = field(default_factory=partial(default, "bench.dynamic.seed"))
    max_concurrency: int | None = field(
        default_factory=partial(default, "bench.dynamic.max_concurrency")
    )
    workload: Workload = field(default_factory=Workload)
    model_mix: ModelMix | None = None

    def __post_init__(self) -> None:
        if not self.rates or any(not r > 0 for r in self.rates):
            raise UserError(
                f"rates must be > 0 requests/s, got {list(self.rates)}", field="--request-rate"
            )
        if len(self.num_prompts) == 1 and len(self.rates) > 1:
            object.__setattr__(self, "num_prompts", self.num_prompts * len(self.rates))
        if len(self.num_prompts) != len(self.rates):
            raise UserError(
                f"--request-rate has {len(self.rates)} values and --num-prompts has "
                f"{len(self.num_prompts)}; give one count per rate (or one for all)",
                field="--num-prompts",
            )
        if any(n < 1 for n in self.num_prompts):
            raise UserError(
                f"values must be >= 1, got {list(self.num_prompts)}", field="--num-prompts"
            )
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise UserError(f"must be >= 1, got {self.max_concurrency}", field="--max-concurrency")


def arrival_times(rate: float, n: int, seed: int = 0) -> np.ndarray:
    """Send times (s from the cell's start) of ``n`` requests at ``rate`` req/s; the last is
    at exactly ``n / rate``. Depends only on (seed, rate, n)."""
    if n < 1:
        return np.zeros(0)
    if math.isinf(rate):
        return np.zeros(n)
    rng = np.random.default_rng([seed, _ARRIVAL_STREAM, round(rate * 1000), n])
    t = np.cumsum(rng.exponential(1.0, size=n))
    return t * ((n / rate) / t[-1])


def build_specs(
    cfg: DynamicConfig, cell_index: int, entries: Sequence[Entry], picks: Sequence[int]
) -> list[RequestSpec]:
    models: list[str | None] = [None] * len(picks)
    if cfg.model_mix is not None:
        rng = np.random.default_rng([cfg.seed, _MODEL_STREAM, cell_index])
        models = list(cfg.model_mix.draw(len(picks), rng))
    return [
        RequestSpec(
            prompt=entries[i].prompt,
            prompt_len=entries[i].prompt_len,
            output_len=entries[i].output_len,
            request_id=f"r{cell_index}-{k}-d{i}",
            ignore_eos=cfg.workload.forced,
            model=models[k],
        )
        for k, i in enumerate(picks)
    ]


async def run_schedule(
    endpoint: Endpoint,
    specs: Sequence[RequestSpec],
    arrivals: Sequence[float],
    max_concurrency: int | None,
    timeout_s: float,
    workload: Workload | None = None,
    on_done: Callable[[int], None] | None = None,
) -> tuple[list[RequestRecord], float]:
    """Send ``specs[i]`` at ``arrivals[i]`` s after the start; records in spec order and the
    cell's wall time (start to the last answer).

    Every request's bytes are made before the clock starts. The pacer sleeps until the next
    due time, then sends everything due, itself, on an idle connection (a request's task only
    waits for its answer); late requests are sent at once and their lateness recorded
    (``sched_lag``), never skipped. With ``max_concurrency`` a request also waits for a free
    slot (``queue_wait``), then its task sends it."""
    if len(specs) != len(arrivals):
        raise UserError("one arrival time per request", field="arrivals")
    workload = workload or Workload()
    api, speculative = workload.api, workload.speculative
    records: list[RequestRecord | None] = [None] * len(specs)
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    done = 0
    async with open_pool(endpoint, timeout_s) as pool:
        reqs = [
            Request(pool, prepare(pool, endpoint, spec, workload), spec, endpoint) for spec in specs
        ]
        dues = [float(at) for at in arrivals]
        t0 = 0.0

        def finish(i: int, rec: RequestRecord, released: float) -> None:
            nonlocal done
            rec.scheduled_time = dues[i]
            rec.queue_wait = released - dues[i]
            rec.sched_lag = rec.start_time - released
            records[i] = rec
            done += 1
            if on_done is not None:
                on_done(done)

        async def answer(i: int) -> None:
            finish(i, await reqs[i].result(), dues[i])

        def answered(i: int, _: object) -> None:
            finish(i, reqs[i].rec, dues[i])
            if done == len(dues):
                all_done.set_result(None)

        async def limited(i: int) -> None:
            assert sem is not None
            async with sem:
                released = max(dues[i], time.perf_counter() - t0)
                reqs[i].send(t0, api, speculative)
                rec = await reqs[i].result()
            finish(i, rec, released)

        tasks = []
        all_done = asyncio.get_running_loop().create_future()
        written = 0  # requests the pacer wrote itself, settled by a callback
        clock = time.perf_counter
        # What exists now is never garbage during the cell: keep the collector's full passes
        # from walking it (pauses that would show as scheduling lag).
        gc.collect()
        gc.freeze()
        try:
            t0 = clock()
            for i, due in enumerate(dues):
                delay = t0 + due - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                if sem is not None:
                    tasks.append(asyncio.create_task(limited(i)))
                elif reqs[i].send(t0, api, speculative):
                    written += 1
                    reqs[i].response.done.add_done_callback(partial(answered, i))  # type: ignore[union-attr]
                else:  # no idle connection: a task opens one
                    tasks.append(asyncio.create_task(answer(i)))
            await asyncio.gather(*tasks)
            if written and done < len(dues):
                await all_done
        finally:
            gc.unfreeze()
        duration = time.perf_counter() - t0
    return records, duration  # type: ignore[return-value]


def cell_row(
    cfg: DynamicConfig,
    rate: float,
    model: str,
    dataset: str,
    records: Sequence[RequestRecord],
    duration_s: float,
    slo: SLO | None,
    reused: int = 0,
) -> dict[str, Any]:
    """One CSV row: config columns, then vLLM-named metrics, then validity columns."""
    n = len(records)
    last_send = max((r.start_time for r in records), default=0.0)
    achieved = n / last_send if last_send > 0 else math.inf
    row: dict[str, Any] = {
        "request_rate": rate,
        "num_prompts": n,
        "max_concurrency": cfg.max_concurrency or "",
        "dataset": dataset,
        "model": model,
        "api": cfg.workload.api,
        "output_mode": cfg.workload.output_mode,
        "lora_mix": str(cfg.model_mix or ""),
        "mean_input_len": sum(r.prompt_len for r in records) / n if n else math.nan,
        "mean_output_len": sum(r.output_len for r in records) / n if n else math.nan,
    }
    row.update(compute_metrics(records, duration_s, slo))
    row.update(
        validity(
            records,
            target_rate=rate,
            achieved_rate=achieved,
            forced_output=cfg.workload.forced,
            check_prompt_len=cfg.workload.api == "completions",
        )
    )
    row["reused_prompts"] = reused
    return row


def run_dynamic(
    endpoint: Endpoint,
    cfg: DynamicConfig,
    entries: Sequence[Entry],
    dataset: str = "",
    slo: SLO | None = None,
    timeout_s: float = 600.0,
    records_out: IO[str] | None = None,
    on_request: Callable[[float, int], None] | None = None,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every rate; rows for the CSV, one JSON line per request to ``records_out``
    (written and flushed as each cell ends)."""
    plan = assign_prompts(len(entries), cfg.num_prompts, cfg.seed)
    rows = []
    for k, (rate, picks) in enumerate(zip(cfg.rates, plan, strict=True)):
        specs = build_specs(cfg, k, entries, [i for i, _ in picks])
        arrivals = arrival_times(rate, len(specs), cfg.seed)
        cb = (lambda n, rate=rate: on_request(rate, n)) if on_request else None
        records, duration = asyncio.run(
            run_schedule(
                endpoint, specs, arrivals, cfg.max_concurrency, timeout_s, cfg.workload, cb
            )
        )
        if records_out is not None:
            for rec in records:
                records_out.write(json.dumps({"request_rate": rate, **rec.as_dict()}) + "\n")
            records_out.flush()
        reused = sum(1 for _, r in picks if r)
        row = cell_row(cfg, rate, endpoint.model, dataset, records, duration, slo, reused)
        rows.append(row)
        if on_cell is not None:
            on_cell(row)
    return rows


__all__ = ["CONFIG_COLUMNS", "EXTRA_VALIDITY_COLUMNS", "VALIDITY_COLUMNS", "DynamicConfig"]
