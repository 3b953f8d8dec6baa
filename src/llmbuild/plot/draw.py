"""matplotlib figures (Agg backend) from the series in ``llmbuild.plot.data``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import IO, Any

from llmbuild.plot.data import BenchSeries, LossSeries


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _concurrency_axis(ax: Any, series: Sequence[BenchSeries]) -> None:
    xs = sorted({c for s in series for c in s.concurrency})
    if xs and xs[-1] / max(xs[0], 1) >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel("concurrency")
    ax.grid(True, alpha=0.3)


def _has(series: Sequence[BenchSeries], col: str) -> bool:
    return any(not math.isnan(v) for s in series for v in s.values.get(col, []))


def bench_figure(
    series: Sequence[BenchSeries],
    slo_ttft_ms: float | None,
    slo_tpot_ms: float | None,
    title: str | None = None,
) -> Any:
    """The seeds' 4-graph p90 picture: p90 TTFT and p90 TPOT against concurrency with the
    SLO thresholds, output throughput, and SLO attainment (or request throughput).

    A point from an invalid row (the benchmark's ``valid`` column) is drawn hollow, with a
    "<series> (invalid)" legend entry and a note in the title; nothing is left out."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    one_pair = len({(s.input_len, s.output_len) for s in series}) == 1
    fourth = (
        ("slo_attainment", "requests meeting SLOs (%)", 100.0)
        if _has(series, "slo_attainment")
        else ("request_throughput", "requests/s", 1.0)
    )
    panels = [
        (axes[0, 0], "p90_ttft_ms", "p90 TTFT (ms)", 1.0, slo_ttft_ms, "TTFT SLO"),
        (axes[0, 1], "p90_tpot_ms", "p90 TPOT (ms/token)", 1.0, slo_tpot_ms, "TPOT SLO"),
        (axes[1, 0], "output_throughput", "output throughput (tokens/s)", 1.0, None, ""),
        (axes[1, 1], fourth[0], fourth[1], fourth[2], None, ""),
    ]
    for ax, col, ylabel, scale, slo, slo_name in panels:
        for s in series:
            ys = [v * scale for v in s.values.get(col, [])]
            if not ys:
                continue
            name = s.label if one_pair else s.name
            valid = s.valid or [True] * len(ys)
            (line,) = ax.plot(
                s.concurrency,
                ys,
                marker="o",
                markevery=[i for i, v in enumerate(valid) if v],
                label=name,
            )
            hollow = [i for i, v in enumerate(valid) if not v]
            if hollow:
                ax.scatter(
                    [s.concurrency[i] for i in hollow],
                    [ys[i] for i in hollow],
                    marker="o",
                    s=70,
                    facecolors="none",
                    edgecolors=line.get_color(),
                    linewidths=1.6,
                    zorder=4,
                    label=f"{name} (invalid)",
                )
            bad = [
                (c, y)
                for c, y, f in zip(s.concurrency, ys, s.values["failures"], strict=True)
                if f and f > 0
            ]
            if bad:
                ax.scatter(
                    [c for c, _ in bad],
                    [y for _, y in bad],
                    marker="x",
                    s=80,
                    color="red",
                    zorder=5,
                    label="cell with failed requests" if ax is axes[0, 0] else None,
                )
        if slo is not None:
            ax.axhline(
                slo, color="red", linestyle="--", linewidth=1.2, label=f"{slo_name} {slo:g} ms"
            )
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel.split(" (")[0] + " vs concurrency")
        _concurrency_axis(ax, series)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    pair = (
        f" (input/output {series[0].input_len}/{series[0].output_len} tokens)"
        if one_pair and series
        else " (label (input/output tokens))"
    )
    invalid = sum(s.invalid for s in series)
    note = (
        f"\nhollow markers: {invalid} invalid cell(s) (see invalid_reason in the CSV)"
        if invalid
        else ""
    )
    fig.suptitle((title or "Static benchmark") + pair + note)
    fig.tight_layout()
    return fig


def loss_figure(series: Sequence[LossSeries], title: str | None = None) -> Any:
    """Loss vs step and training throughput (tokens/s per device) vs step, one line per log
    and phase."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = {s.label for s in series}
    for s in series:
        name = s.label if len(series) == len(labels) else f"{s.label} {s.phase}"
        ax1.plot(s.step, s.loss, label=name, linewidth=1.2)
        pts = [(x, y) for x, y in zip(s.step, s.tokens_per_s, strict=True) if not math.isnan(y)]
        if pts:
            ax2.plot([x for x, _ in pts], [y for _, y in pts], label=name, linewidth=1.2)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_title("training loss")
    ax2.set_xlabel("step")
    ax2.set_ylabel("tokens/s per device")
    ax2.set_title("training throughput per device")
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_png(fig: Any, fh: IO[bytes], dpi: int = 110) -> None:
    fig.savefig(fh, format="png", dpi=dpi)
    _pyplot().close(fig)
