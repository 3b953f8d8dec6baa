"""matplotlib figures (Agg backend) from the series in ``llmbuild.plot.data``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import IO, Any

from llmbuild.plot.data import BenchSeries, LossSeries, RateSeries, SweepPoint


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


def scale_to_data(
    ax: Any, ys: Sequence[float], slo: float | None = None, slo_name: str = ""
) -> None:
    """The y axis from 0 to the data's maximum (plus a margin), whatever the SLO: an SLO
    inside that range is a dashed red line, one above it is named at the top edge (so a
    2000 ms SLO never flattens 20 ms of data). No data: the axis shows the SLO."""
    finite = [y for y in ys if math.isfinite(y)]
    peak = max(finite, default=0.0)
    top = peak * 1.15 if peak > 0 else (slo * 1.15 if slo else 1.0)
    ax.set_ylim(0, top)
    if slo is None:
        return
    label = f"{slo_name} {slo:g} ms"
    if slo <= top:
        ax.axhline(slo, color="red", linestyle="--", linewidth=1.2, label=label)
    else:
        ax.annotate(
            f"{label} (above the axis: data max {peak:.3g} ms)",
            xy=(0.99, 0.985),
            xycoords="axes fraction",
            ha="right",
            va="top",
            color="red",
            fontsize=8,
        )


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
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel.split(" (")[0] + " vs concurrency")
        _concurrency_axis(ax, series)
        ys_all = [v * scale for s in series for v in s.values.get(col, [])]
        scale_to_data(ax, ys_all, slo, slo_name)
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


def _rate_axis(ax: Any, series: Sequence[RateSeries]) -> dict[float, float]:
    """Request rates on a log-2 axis when they spread 4x or more; ``inf`` (all at once) drawn
    one step past the highest finite rate and labelled so. Returns rate -> x position."""
    rates = sorted({r for s in series for r in s.rate if not math.isnan(r)})
    finite = [r for r in rates if math.isfinite(r)]
    spread = bool(finite) and finite[-1] / max(finite[0], 1e-9) >= 4
    pos = {r: r for r in finite}
    if any(math.isinf(r) for r in rates):
        pos[math.inf] = (finite[-1] * 2 if spread else finite[-1] + 1) if finite else 1.0
    if spread:
        ax.set_xscale("log", base=2)
    ticks = [pos[r] for r in rates]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["inf" if math.isinf(r) else f"{r:g}" for r in rates])
    ax.set_xlabel("request rate (requests/s, Poisson arrivals)")
    ax.grid(True, alpha=0.3)
    return pos


def dynamic_figure(
    series: Sequence[RateSeries],
    slo_ttft_ms: float | None,
    slo_tpot_ms: float | None,
    title: str | None = None,
) -> Any:
    """Latency against request rate, one line per run: p90 TTFT, p90 TPOT (with the SLOs),
    p90 end-to-end latency and the output throughput achieved. Invalid rows hollow."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    panels = [
        (axes[0, 0], "p90_ttft_ms", "p90 TTFT (ms)", slo_ttft_ms, "TTFT SLO"),
        (axes[0, 1], "p90_tpot_ms", "p90 TPOT (ms/token)", slo_tpot_ms, "TPOT SLO"),
        (axes[1, 0], "p90_e2el_ms", "p90 end-to-end latency (ms)", None, ""),
        (axes[1, 1], "output_throughput", "output throughput (tokens/s)", None, ""),
    ]
    for ax, col, ylabel, slo, slo_name in panels:
        pos = _rate_axis(ax, series)
        for s in series:
            xs = [pos.get(r, math.nan) for r in s.rate]
            ys = s.values[col]
            valid = s.valid or [True] * len(ys)
            (line,) = ax.plot(
                xs, ys, marker="o", markevery=[i for i, v in enumerate(valid) if v], label=s.label
            )
            hollow = [i for i, v in enumerate(valid) if not v]
            if hollow:
                ax.scatter(
                    [xs[i] for i in hollow],
                    [ys[i] for i in hollow],
                    s=70,
                    facecolors="none",
                    edgecolors=line.get_color(),
                    zorder=4,
                    label=f"{s.label} (invalid)",
                )
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel.split(" (")[0] + " vs request rate")
        scale_to_data(ax, [v for s in series for v in s.values[col]], slo, slo_name)
        ax.legend(fontsize=8)
    invalid = sum(s.invalid for s in series)
    note = f"\nhollow markers: {invalid} invalid row(s)" if invalid else ""
    fig.suptitle((title or "Dynamic benchmark") + note)
    fig.tight_layout()
    return fig


def pareto_figure(
    points: Sequence[SweepPoint], front: Sequence[SweepPoint], title: str | None = None
) -> Any:
    """Output throughput per user (x) against output throughput (y), one marker per cell
    (colour per run when there are at most 10 runs, hollow when invalid), the Pareto front
    as a line through its named points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 7))
    labels = list(dict.fromkeys(p.label for p in points))
    colour = len(labels) <= 10
    for label in labels if colour else [None]:
        pts = [p for p in points if colour is False or p.label == label]
        ok = [p for p in pts if p.valid]
        bad = [p for p in pts if not p.valid]
        kw = {"label": label} if colour else {"color": "0.55", "label": "all cells"}
        sc = ax.scatter([p.per_user for p in ok], [p.throughput for p in ok], s=36, **kw)
        if bad:
            ax.scatter(
                [p.per_user for p in bad],
                [p.throughput for p in bad],
                s=60,
                facecolors="none",
                edgecolors=sc.get_facecolor()[0] if len(ok) else "0.55",
                label=f"{label or 'cells'} (invalid)",
            )
    if front:
        ax.plot(
            [p.per_user for p in front],
            [p.throughput for p in front],
            color="black",
            linewidth=1.4,
            marker="D",
            markersize=5,
            label=f"Pareto front ({len(front)} of {len(points)} cells)",
            zorder=5,
        )
        for p in front:
            ax.annotate(
                p.name,
                (p.per_user, p.throughput),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=7,
            )
    ax.set_xlabel("output throughput per user (tokens/s per concurrent request)")
    ax.set_ylabel("output throughput (tokens/s)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title or 'sweep'}: throughput per user vs throughput")
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
