"""Sweep plots (Pareto front, comparison, table), dynamic plots, and axes scaled to the data
whatever the SLO."""

from __future__ import annotations

import csv
import math

import pytest

from llmbuild.errors import UserError
from llmbuild.plot.data import (
    SweepPoint,
    pareto_front,
    rate_series,
    read_bench_csv,
    read_dynamic_csv,
    sweep_points,
    sweep_table,
)

pytestmark = pytest.mark.unit


def P(label, per_user, throughput, valid=True, c=1):  # noqa: N802
    return SweepPoint(label, c, 32, 16, per_user, throughput, valid)


def test_pareto_front_keeps_only_undominated_points():
    a, b, c, d = P("a", 10, 10), P("b", 5, 40), P("c", 4, 30), P("d", 2, 60)
    e = P("e", 9, 9)  # beaten by a on both
    assert pareto_front([a, b, c, d, e]) == [d, b, a]
    # a tie on both keeps the first; a point equal in throughput but slower per user is out
    a2 = P("a2", 10, 10)
    f = P("f", 8, 10)
    assert pareto_front([a, a2, f]) == [a]
    # invalid and NaN points never make the front
    g = P("g", 20, 100, valid=False)
    h = P("h", math.nan, 500)
    assert pareto_front([a, g, h]) == [a]
    assert pareto_front([]) == []


def write_static(path, rows):
    cols = ["concurrency", "input_len", "output_len", "p90_ttft_ms", "p90_tpot_ms"]
    cols += ["output_throughput", "median_ttft_ms", "failures", "valid", "invalid_reason"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for c, thr, ttft in rows:
            w.writerow(
                {
                    "concurrency": c,
                    "input_len": 32,
                    "output_len": 16,
                    "p90_ttft_ms": ttft,
                    "p90_tpot_ms": 3.0 + c,
                    "output_throughput": thr,
                    "median_ttft_ms": ttft * 0.8,
                    "failures": 0,
                    "valid": True,
                    "invalid_reason": "",
                }
            )
    return path


def test_sweep_points_and_table(tmp_path):
    a = read_bench_csv(write_static(tmp_path / "a.csv", [(1, 50.0, 20.0), (4, 120.0, 30.0)]))
    b = read_bench_csv(write_static(tmp_path / "b.csv", [(1, 40.0, 25.0), (4, 160.0, 35.0)]))
    labels = ["sft/s4/c", "sft/s8/c"]
    points = sweep_points([a, b], labels)
    assert [(p.label, p.per_user, p.throughput) for p in points] == [
        ("sft/s4/c", 50.0, 50.0),
        ("sft/s4/c", 30.0, 120.0),
        ("sft/s8/c", 40.0, 40.0),
        ("sft/s8/c", 40.0, 160.0),
    ]
    assert [p.name for p in pareto_front(points)] == ["sft/s8/c c=4", "sft/s4/c c=1"]
    columns, rows = sweep_table([a, b], labels)
    assert columns[:6] == [
        "label",
        "variant",
        "setting",
        "workload",
        "output_throughput_per_user",
        "on_pareto_front",
    ]
    assert [(r["setting"], r["concurrency"], r["on_pareto_front"]) for r in rows] == [
        ("s4", "1", True),
        ("s4", "4", False),
        ("s8", "1", False),
        ("s8", "4", True),
    ]


def write_dynamic(path, rates, scale=1.0, invalid_at=None):
    cols = ["request_rate", "p90_ttft_ms", "p90_tpot_ms", "p90_e2el_ms", "output_throughput"]
    cols += ["achieved_request_rate", "valid"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rates:
            x = 64.0 if r == "inf" else float(r)
            w.writerow(
                {
                    "request_rate": r,
                    "p90_ttft_ms": 10.0 * x * scale,
                    "p90_tpot_ms": 2.0 + x * scale,
                    "p90_e2el_ms": 100.0 + 5 * x * scale,
                    "output_throughput": 16.0 * x,
                    "achieved_request_rate": x,
                    "valid": r != invalid_at,
                }
            )
    return path


def test_rate_series_sorted_with_inf_last(tmp_path):
    rows = read_dynamic_csv(write_dynamic(tmp_path / "d.csv", ["8", "inf", "1", "2"]))
    (s,) = rate_series([rows], ["sft"])
    assert s.rate == [1.0, 2.0, 8.0, math.inf]
    assert s.values["p90_ttft_ms"] == [10.0, 20.0, 80.0, 640.0]
    p = tmp_path / "static.csv"
    write_static(p, [(1, 1.0, 1.0)])
    with pytest.raises(UserError, match="static.csv: request_rate: missing column"):
        read_dynamic_csv(p)


# --- figures (plot env) -------------------------------------------------------------------


def _hlines(ax):
    return [line.get_ydata()[0] for line in ax.lines if len(set(line.get_ydata())) == 1]


def test_axes_follow_the_data_not_a_far_slo():
    pytest.importorskip("matplotlib")
    from llmbuild.plot.draw import _pyplot, scale_to_data

    plt = _pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3)
    ax1.plot([1, 2], [20.0, 30.0])
    scale_to_data(ax1, [20.0, 30.0, math.nan], 2000.0, "TTFT SLO")
    assert ax1.get_ylim() == pytest.approx((0, 34.5))
    assert _hlines(ax1) == []  # the SLO does not set the scale...
    (note,) = ax1.texts  # ...it is named at the top edge
    assert note.get_text() == "TTFT SLO 2000 ms (above the axis: data max 30 ms)"
    ax2.plot([1, 2], [150.0, 300.0])
    scale_to_data(ax2, [150.0, 300.0], 200.0, "TPOT SLO")
    assert ax2.get_ylim() == pytest.approx((0, 345.0))
    assert _hlines(ax2) == [200.0] and not ax2.texts
    scale_to_data(ax3, [math.nan], 200.0, "TPOT SLO")  # no data: the SLO is the scale
    assert ax3.get_ylim() == pytest.approx((0, 230.0)) and _hlines(ax3) == [200.0]
    plt.close(fig)


def test_comparison_of_runs_is_scaled_to_their_data(tmp_path):
    pytest.importorskip("matplotlib")
    from llmbuild.plot.data import bench_series
    from llmbuild.plot.draw import bench_figure

    a = read_bench_csv(write_static(tmp_path / "a.csv", [(1, 50.0, 20.0), (4, 120.0, 30.0)]))
    b = read_bench_csv(write_static(tmp_path / "b.csv", [(1, 40.0, 25.0), (4, 160.0, 35.0)]))
    fig = bench_figure(bench_series([a, b], ["on", "off"]), 2000.0, 200.0)
    ttft, tpot = fig.axes[:2]
    assert ttft.get_ylim()[1] == pytest.approx(35.0 * 1.15)
    assert tpot.get_ylim()[1] == pytest.approx(7.0 * 1.15)
    assert [line.get_label() for line in ttft.lines] == ["on", "off"]
    assert "TTFT SLO 2000 ms" in ttft.texts[0].get_text()


def test_dynamic_figure_latency_vs_rate(tmp_path):
    pytest.importorskip("matplotlib")
    from llmbuild.plot.draw import dynamic_figure

    a = read_dynamic_csv(write_dynamic(tmp_path / "a.csv", ["1", "4", "inf"]))
    b = read_dynamic_csv(write_dynamic(tmp_path / "b.csv", ["1", "4", "inf"], 2.0, "4"))
    fig = dynamic_figure(rate_series([a, b], ["sft", "sft-w8a8"]), 2000.0, 200.0)
    ttft, tpot, e2el, thr = fig.axes[:4]
    assert [t.get_text() for t in ttft.get_xticklabels()] == ["1", "4", "inf"]
    assert list(ttft.lines[0].get_xdata()) == [1.0, 4.0, 8.0]  # inf one step past 4
    assert list(ttft.lines[1].get_ydata()) == [20.0, 80.0, 1280.0]
    assert ttft.get_ylim()[1] == pytest.approx(1280.0 * 1.15)
    assert _hlines(tpot) == [] and "TPOT SLO 200 ms" in tpot.texts[0].get_text()
    assert e2el.get_ylabel().startswith("p90 end-to-end") and thr.lines
    assert len(ttft.collections) == 1  # the invalid row, hollow
    assert "1 invalid row" in fig._suptitle.get_text()


def plot_cli(argv):
    import argparse
    import sys

    from llmbuild.plot import cli

    parser = argparse.ArgumentParser(prog="llmbuild plot")
    cli.register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"llmbuild plot {args.verb}: error: {exc}", file=sys.stderr)
        return 2


def test_plot_sweep_and_dynamic_clis(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = write_static(tmp_path / "a.csv", [(1, 50.0, 20.0), (4, 120.0, 30.0)])
    b = write_static(tmp_path / "b.csv", [(1, 40.0, 25.0), (4, 160.0, 35.0)])
    out, cmp_, table = tmp_path / "p.png", tmp_path / "c.png", tmp_path / "t.csv"
    argv = ["sweep", "--input", str(a), str(b), "--labels", "sft/on/w,sft/off/w"]
    argv += ["--output", str(out), "--compare", str(cmp_), "--table", str(table), "--title", "pc"]
    assert plot_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "Pareto front: sft/off/w c=4 (40, 160); sft/on/w c=1 (50, 50)" in printed
    for png in (out, cmp_):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / f"{png.name}.provenance.json").exists()
    rows = list(csv.DictReader(table.open()))
    assert [(r["setting"], r["on_pareto_front"]) for r in rows] == [
        ("on", "True"),
        ("on", "False"),
        ("off", "False"),
        ("off", "True"),
    ]
    d = write_dynamic(tmp_path / "d.csv", ["1", "2"])
    dyn = tmp_path / "dyn.png"
    assert plot_cli(["dynamic", "--input", str(d), "--output", str(dyn)]) == 0
    assert dyn.read_bytes()[:4] == b"\x89PNG"
    assert plot_cli(["dynamic", "--input", str(a), "--output", str(dyn)]) == 2
    assert "request_rate: missing column" in capsys.readouterr().err
