from __future__ import annotations

import csv
import json
import sys

import pytest

from llmbuild.errors import UserError
from llmbuild.plot.data import bench_series, parse_labels, read_bench_csv, read_train_log

pytestmark = pytest.mark.unit

COLUMNS = [
    "concurrency",
    "input_len",
    "output_len",
    "epochs",
    "num_requests",
    "model",
    "request_throughput",
    "slo_attainment",
    "output_throughput",
    "total_token_throughput",
    "p90_ttft_ms",
    "p90_tpot_ms",
    "failures",
]


def write_bench_csv(
    path, scale=1.0, pairs=((32, 16),), fail_at=None, slo=True, invalid_at=None, gate=False
):
    """``gate``: with the validity gate's columns (``invalid_at``: the concurrency whose row
    is invalid); without, the CSV is one written before those columns existed."""
    columns = COLUMNS + (["valid", "invalid_reason"] if gate else [])
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for i, o in pairs:
            for c in (8, 1, 2, 4, 16):  # unsorted on purpose
                gate_columns = {
                    "valid": c != invalid_at,
                    "invalid_reason": "client lag p99 150.00 ms > 100 ms"
                    if c == invalid_at
                    else "",
                }
                w.writerow(
                    {
                        **(gate_columns if gate else {}),
                        "concurrency": c,
                        "input_len": i,
                        "output_len": o,
                        "epochs": 2,
                        "num_requests": 2 * c,
                        "model": "m",
                        "request_throughput": 2.0 * c / scale,
                        "slo_attainment": (1.0 if c < 8 else 0.5) if slo else "nan",
                        "output_throughput": 30.0 * c / scale,
                        "total_token_throughput": 90.0 * c / scale,
                        "p90_ttft_ms": 40.0 * c * scale,
                        "p90_tpot_ms": 5.0 + c * scale,
                        "failures": 1 if c == fail_at else 0,
                    }
                )
    return path


def write_log(path, phases=("pretrain",), bad_line=None):
    lines = []
    step = 0
    for ph in phases:
        for k in range(20):
            step += 1
            lines.append(
                json.dumps(
                    {
                        "step": step,
                        "loss": 6.0 / (1 + 0.2 * step),
                        "lr": 1e-3,
                        "grad_norm": 1.0,
                        "tokens": 512 * step,
                        "elapsed": 0.1 * step,
                        "tokens_per_s": 5000 + 10 * k,
                        "phase": ph,
                    }
                )
            )
    if bad_line is not None:
        lines.insert(bad_line - 1, bad_line_text := '{"step": 3, "loss": "abc"}')
        assert bad_line_text
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bench_series_grouped_by_pair_and_sorted(tmp_path):
    rows = read_bench_csv(write_bench_csv(tmp_path / "a.csv", pairs=((32, 16), (64, 8))))
    series = bench_series([rows], ["a"])
    assert [(s.input_len, s.output_len) for s in series] == [(32, 16), (64, 8)]
    assert series[0].concurrency == [1, 2, 4, 8, 16]
    assert series[0].values["p90_ttft_ms"] == [40.0, 80.0, 160.0, 320.0, 640.0]
    assert series[1].name == "a (64/8)"


def test_bench_csv_missing_column_is_named(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("concurrency,input_len,output_len,p90_ttft_ms\n1,32,16,5\n")
    with pytest.raises(UserError, match="bad.csv: p90_tpot_ms: missing column"):
        read_bench_csv(p)


def test_labels_must_match_files():
    assert parse_labels(None, ["x/a.csv", "y/b.csv"], "--labels") == ["a", "b"]
    assert parse_labels("base, w8a8", ["a", "b"], "--labels") == ["base", "w8a8"]
    with pytest.raises(UserError, match="2 files, 1 labels"):
        parse_labels("only", ["a", "b"], "--labels")


def test_train_log_phases_and_malformed_line(tmp_path):
    series = read_train_log(write_log(tmp_path / "t.jsonl", ("pretrain", "sft")), "run")
    assert [(s.phase, len(s.step)) for s in series] == [("pretrain", 20), ("sft", 20)]
    assert series[1].step[0] == 21 and series[0].tokens_per_s[0] == 5000
    # a log with ranks: the plot's throughput is per device
    rec = {"step": 1, "loss": 2.0, "tokens_per_s": 800.0, "tokens_per_s_per_device": 200.0}
    (tmp_path / "ranks.jsonl").write_text(json.dumps(rec) + "\n")
    assert read_train_log(tmp_path / "ranks.jsonl", "run")[0].tokens_per_s == [200.0]
    with pytest.raises(UserError, match=r"t2.jsonl: line 4: needs numeric 'step' and 'loss'"):
        read_train_log(write_log(tmp_path / "t2.jsonl", bad_line=4), "run")
    (tmp_path / "t3.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2,\n')
    with pytest.raises(UserError, match=r"t3.jsonl: line 2: not valid JSON"):
        read_train_log(tmp_path / "t3.jsonl", "run")


# --- figures (plot env) -------------------------------------------------------------------


def plot_cli(argv):
    import argparse

    from llmbuild.plot import cli

    parser = argparse.ArgumentParser(prog="llmbuild plot")
    cli.register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"llmbuild plot {args.verb}: error: {exc}", file=sys.stderr)
        return 2


def test_bench_figure_has_slo_lines_and_one_line_per_run(tmp_path):
    pytest.importorskip("matplotlib")
    from llmbuild.plot.draw import bench_figure

    a = read_bench_csv(write_bench_csv(tmp_path / "a.csv"))
    b = read_bench_csv(write_bench_csv(tmp_path / "b.csv", scale=1.5, fail_at=16))
    fig = bench_figure(bench_series([a, b], ["base", "w8a8"]), 500.0, 12.0)
    ttft, tpot, thr, fourth = fig.axes[:4]
    hlines = [tuple(line.get_ydata()) for line in ttft.lines if len(set(line.get_ydata())) == 1]
    assert (500.0, 500.0) in hlines
    assert any(tuple(line.get_ydata()) == (12.0, 12.0) for line in tpot.lines)
    assert [line.get_label() for line in thr.lines] == ["base", "w8a8"]
    assert list(thr.lines[1].get_xdata()) == [1, 2, 4, 8, 16]
    assert fourth.get_ylabel() == "requests meeting SLOs (%)"
    assert list(fourth.lines[0].get_ydata()) == [100.0, 100.0, 100.0, 50.0, 50.0]
    assert len(ttft.collections) == 1  # red x on the cell with failures


def test_plot_bench_cli_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = write_bench_csv(tmp_path / "a.csv")
    b = write_bench_csv(tmp_path / "b.csv", scale=1.5, fail_at=16, slo=False)
    out = tmp_path / "bench.png"
    rc = plot_cli(
        [
            "bench",
            "--input",
            str(a),
            str(b),
            "--labels",
            "base,w8a8",
            "--slo-ttft-ms",
            "500",
            "--slo-tpot-ms",
            "12",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    import matplotlib.image

    h, w = matplotlib.image.imread(str(out)).shape[:2]
    assert (w, h) == (1320, 935)
    assert (tmp_path / "bench.png.provenance.json").exists()
    assert (
        plot_cli(["bench", "--input", str(a), str(b), "--labels", "x", "--output", str(out)]) == 2
    )
    assert "--labels" in capsys.readouterr().err


def test_plot_loss_cli_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from llmbuild.plot.draw import loss_figure

    a = write_log(tmp_path / "pre.jsonl", ("pretrain", "sft"))
    b = write_log(tmp_path / "other.jsonl")
    out = tmp_path / "loss.png"
    assert plot_cli(["loss", "--input", str(a), str(b), "--output", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    fig = loss_figure(read_train_log(a, "pre") + read_train_log(b, "other"))
    assert [line.get_label() for line in fig.axes[0].lines] == [
        "pre pretrain",
        "pre sft",
        "other pretrain",
    ]
    assert plot_cli(["loss", "--input", str(a), "--output", str(tmp_path / "x.svg")]) == 2


# --- invalid rows (the benchmark's validity gate in warn mode) -----------------------------


def test_valid_column_read_and_older_csvs_are_valid(tmp_path):
    old = bench_series([read_bench_csv(write_bench_csv(tmp_path / "old.csv"))], ["old"])[0]
    assert old.valid == [True] * 5 and old.invalid == 0
    new = read_bench_csv(write_bench_csv(tmp_path / "new.csv", gate=True, invalid_at=4))
    s = bench_series([new], ["new"])[0]
    assert s.concurrency == [1, 2, 4, 8, 16] and s.valid == [True, True, False, True, True]
    assert s.invalid_reason[2] == "client lag p99 150.00 ms > 100 ms" and s.invalid == 1
    p = tmp_path / "lower.csv"
    p.write_text(
        write_bench_csv(tmp_path / "x.csv", gate=True, invalid_at=1)
        .read_text()
        .replace("False", "false")
    )
    assert bench_series([read_bench_csv(p)], ["x"])[0].valid[0] is False


def test_invalid_rows_are_drawn_hollow_and_named_in_the_legend(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgba

    from llmbuild.plot.draw import bench_figure

    good = read_bench_csv(write_bench_csv(tmp_path / "good.csv", gate=True))
    bad = read_bench_csv(write_bench_csv(tmp_path / "bad.csv", gate=True, invalid_at=4))
    fig = bench_figure(bench_series([good, bad], ["base", "w8a8"]), 500.0, 12.0)
    for ax in fig.axes[:4]:
        (hollow,) = ax.collections  # one scatter: the invalid cell, nothing else
        assert hollow.get_label() == "w8a8 (invalid)"
        assert [tuple(p) for p in hollow.get_offsets()][0][0] == 4
        assert hollow.get_facecolors().size == 0 or hollow.get_facecolors()[0][3] == 0
        line = ax.lines[1]
        assert to_rgba(hollow.get_edgecolors()[0]) == to_rgba(line.get_color())
        assert line.get_markevery() == [0, 1, 3, 4]  # the line keeps every point
        assert list(line.get_xdata()) == [1, 2, 4, 8, 16]
        assert "w8a8 (invalid)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "hollow markers: 1 invalid cell(s)" in fig._suptitle.get_text()
    clean = bench_figure(bench_series([good, good], ["base", "w8a8"]), 500.0, 12.0)
    assert all(not ax.collections for ax in clean.axes[:4])
    assert "hollow" not in clean._suptitle.get_text()

    # the CLI draws both, and the pictures differ only by what marks the invalid cell
    outs = []
    for name, csvs in (("valid", ["good.csv", "good.csv"]), ("invalid", ["good.csv", "bad.csv"])):
        out = tmp_path / f"{name}.png"
        argv = ["bench", "--input", *[str(tmp_path / c) for c in csvs], "--labels", "base,w8a8"]
        assert plot_cli(argv + ["--output", str(out)]) == 0
        outs.append(out)
    assert "1 invalid cell(s) drawn hollow" in capsys.readouterr().out
    import matplotlib.image

    a, b = (matplotlib.image.imread(str(p)) for p in outs)
    assert a.shape == b.shape and (a != b).any()


def test_slo_defaults_are_the_schemas():
    import argparse

    from llmbuild.plot import cli
    from llmbuild.schema import default

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(["bench", "--input", "a.csv", "b.csv", "--output", "p.png"])
    assert args.input == ["a.csv", "b.csv"]
    assert (args.slo_ttft_ms, args.slo_tpot_ms) == (
        default("plot.slo_ttft_ms"),
        default("plot.slo_tpot_ms"),
    )
