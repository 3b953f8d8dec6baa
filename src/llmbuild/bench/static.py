"""Static benchmark: concurrency list x (input_len, output_len) pairs x epochs.

The seeds' ``benchmark_parallel.py`` shape: for each (input, output) pair and each concurrency
c, ``epochs`` rounds of c simultaneous requests (a round starts when the previous one has
finished), each with its own random prompt of exactly ``input_len`` tokens (after an optional
common prefix of ``prefix_len`` tokens, for prefix-caching runs) and, in forced output mode
(the default), ``ignore_eos`` so it generates exactly ``output_len`` tokens. The workload
options (API, output mode, speculative accounting, LoRA mix) are ``workload.py``'s. One CSV
row per cell; every column is defined in ``metrics.py``.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import IO, Any

import numpy as np

from llmbuild.bench.client import Endpoint, open_pool, run_concurrent, stream_completion
from llmbuild.bench.metrics import SLO, VALIDITY_COLUMNS, compute_metrics, validity
from llmbuild.bench.prompts import PromptMaker
from llmbuild.bench.records import RequestRecord, RequestSpec
from llmbuild.bench.workload import ModelMix, Workload
from llmbuild.errors import UserError
from llmbuild.schema import default

__all__ = ["CONFIG_COLUMNS", "VALIDITY_COLUMNS", "StaticConfig", "run_static", "write_csv"]

CONFIG_COLUMNS = (
    "concurrency",
    "input_len",
    "output_len",
    "epochs",
    "num_requests",
    "model",
    "prefix_len",
    "api",
    "output_mode",
    "lora_mix",
)
_PREFIX_STREAM = 0x5EED
_MODEL_STREAM = 0x10AA


@dataclass(frozen=True)
class Cell:
    concurrency: int
    input_len: int
    output_len: int


@dataclass(frozen=True)
class StaticConfig:
    """The cells; the defaults of the fields a config key sets are the schema's."""

    concurrency: tuple[int, ...]
    input_lens: tuple[int, ...]
    output_lens: tuple[int, ...]
    epochs: int = field(default_factory=partial(default, "bench.static.epochs"))
    seed: int = field(default_factory=partial(default, "bench.static.seed"))
    prefix_len: int = field(default_factory=partial(default, "bench.static.prefix_len"))
    workload: Workload = field(default_factory=Workload)
    model_mix: ModelMix | None = None

    def __post_init__(self) -> None:
        if len(self.input_lens) != len(self.output_lens):
            raise UserError(
                f"--input-len has {len(self.input_lens)} values and --output-len has "
                f"{len(self.output_lens)}; they pair up one to one, so give equally many",
                field="--output-len",
            )
        for flag, values in (
            ("--concurrency", self.concurrency),
            ("--input-len", self.input_lens),
            ("--output-len", self.output_lens),
        ):
            if not values or any(v < 1 for v in values):
                raise UserError(f"values must be >= 1, got {list(values)}", field=flag)
        if self.epochs < 1:
            raise UserError(f"must be >= 1, got {self.epochs}", field="--epochs")
        if self.prefix_len < 0 or any(self.prefix_len >= n for n in self.input_lens):
            raise UserError(
                f"must be >= 0 and below every input length, got {self.prefix_len}",
                field="--prefix-len",
            )

    def cells(self) -> list[Cell]:
        return [
            Cell(c, i, o)
            for i, o in zip(self.input_lens, self.output_lens, strict=True)
            for c in self.concurrency
        ]


def build_requests(cfg: StaticConfig, cell: Cell, maker: PromptMaker) -> list[list[RequestSpec]]:
    """``epochs`` rounds of ``concurrency`` specs; prompts depend only on seed and cell, and
    every request has its own prompt (no accidental prefix-cache hits across requests)."""
    prefix = maker.prefix(cfg.prefix_len, np.random.default_rng([cfg.seed, _PREFIX_STREAM]))
    rng = np.random.default_rng([cfg.seed, cell.input_len, cell.output_len, cell.concurrency])
    n = cfg.epochs * cell.concurrency
    models: list[str | None] = [None] * n
    if cfg.model_mix is not None:
        mrng = np.random.default_rng([cfg.seed, cell.concurrency, _MODEL_STREAM])
        models = list(cfg.model_mix.draw(n, mrng))
    rounds = []
    for e in range(cfg.epochs):
        rounds.append(
            [
                RequestSpec(
                    prompt=maker.make(cell.input_len, rng, prefix),
                    prompt_len=cell.input_len,
                    output_len=cell.output_len,
                    request_id=f"c{cell.concurrency}-i{cell.input_len}-o{cell.output_len}-e{e}-{k}",
                    ignore_eos=cfg.workload.forced,
                    model=models[e * cell.concurrency + k],
                )
                for k in range(cell.concurrency)
            ]
        )
    return rounds


def cell_row(
    cfg: StaticConfig,
    cell: Cell,
    model: str,
    records: Sequence[RequestRecord],
    duration_s: float,
    slo: SLO | None,
) -> dict[str, Any]:
    """One CSV row: config columns, then vLLM-named metrics, then validity columns."""
    row: dict[str, Any] = {
        "concurrency": cell.concurrency,
        "input_len": cell.input_len,
        "output_len": cell.output_len,
        "epochs": cfg.epochs,
        "num_requests": cfg.epochs * cell.concurrency,
        "model": model,
        "prefix_len": cfg.prefix_len,
        "api": cfg.workload.api,
        "output_mode": cfg.workload.output_mode,
        "lora_mix": str(cfg.model_mix or ""),
    }
    row.update(compute_metrics(records, duration_s, slo))
    achieved = len(records) / duration_s if duration_s > 0 else float("nan")
    row.update(
        validity(
            records,
            achieved_rate=achieved,
            forced_output=cfg.workload.forced,
            check_prompt_len=cfg.workload.api == "completions",
        )
    )
    return row


async def run_cell(
    endpoint: Endpoint,
    rounds: list[list[RequestSpec]],
    concurrency: int,
    timeout_s: float,
    on_request: Callable[[int], None] | None = None,
    workload: Workload | None = None,
) -> tuple[list[RequestRecord], float]:
    """Send the rounds one after another; returns the records and the cell's wall time.

    A round's requests are all due when it starts: each one's scheduling lag is how long
    after the round's start the client actually sent it."""
    records: list[RequestRecord] = []
    async with open_pool(endpoint, timeout_s) as session:
        t0 = time.perf_counter()
        for specs in rounds:
            base = len(records)

            def done(n: int, base: int = base) -> None:
                if on_request is not None:
                    on_request(base + n)

            due = time.perf_counter() - t0
            got = await run_concurrent(
                specs,
                concurrency,
                lambda s: stream_completion(session, endpoint, s, t0, workload),
                done,
            )
            for rec in got:
                rec.scheduled_time = due
                rec.sched_lag = max(rec.start_time - due, 0.0)
            records += got
        duration = time.perf_counter() - t0
    return records, duration


def run_static(
    endpoint: Endpoint,
    cfg: StaticConfig,
    maker: PromptMaker,
    slo: SLO | None = None,
    timeout_s: float = 600.0,
    records_out: IO[str] | None = None,
    on_request: Callable[[Cell, int], None] | None = None,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every cell; rows for the CSV, and one JSON line per request to ``records_out``."""
    rows = []
    for cell in cfg.cells():
        rounds = build_requests(cfg, cell, maker)
        cb = (lambda n, cell=cell: on_request(cell, n)) if on_request else None
        records, duration = asyncio.run(
            run_cell(endpoint, rounds, cell.concurrency, timeout_s, cb, cfg.workload)
        )
        if records_out is not None:
            for k, rec in enumerate(records):
                line: dict[str, Any] = {
                    "concurrency": cell.concurrency,
                    "input_len": cell.input_len,
                    "output_len": cell.output_len,
                    "epoch": k // cell.concurrency,
                    **rec.as_dict(),
                }
                records_out.write(json.dumps(line) + "\n")
            records_out.flush()
        row = cell_row(cfg, cell, endpoint.model, records, duration, slo)
        rows.append(row)
        if on_cell is not None:
            on_cell(row)
    return rows


def write_csv(rows: Sequence[dict[str, Any]], fh: IO[str]) -> None:
    if not rows:
        return
    writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
