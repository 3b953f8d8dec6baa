"""`llmbuild plot ...`: benchmark and training-loss figures (PNG)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llmbuild import provenance
from llmbuild.atomic import atomic_file
from llmbuild.errors import UserError
from llmbuild.schema import default


def _check_png(path: str) -> Path:
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise UserError("the output must be a .png file", path=p, field="--output")
    return p


def _bench(args: argparse.Namespace) -> int:
    from llmbuild.plot.data import bench_series, parse_labels, read_bench_csv
    from llmbuild.plot.draw import bench_figure, save_png

    started = time.time()
    out = _check_png(args.output)
    _check_slos(args)
    labels = parse_labels(args.labels, args.input, "--labels")
    series = bench_series([read_bench_csv(p) for p in args.input], labels)
    fig = bench_figure(series, args.slo_ttft_ms, args.slo_tpot_ms, args.title)
    with atomic_file(out, "wb") as fh:
        save_png(fig, fh)
    provenance.write(out, command="plot bench", args=vars(args), inputs=args.input, started=started)
    invalid = sum(s.invalid for s in series)
    print(
        f"wrote {out}: {len(series)} series from {len(args.input)} CSV file(s)"
        + (f"; {invalid} invalid cell(s) drawn hollow" if invalid else "")
    )
    return 0


def _check_slos(args: argparse.Namespace) -> None:
    for flag, v in (("--slo-ttft-ms", args.slo_ttft_ms), ("--slo-tpot-ms", args.slo_tpot_ms)):
        if v is not None and not v > 0:
            raise UserError(f"must be > 0 ms, got {v}", field=flag)


def _dynamic(args: argparse.Namespace) -> int:
    from llmbuild.plot.data import parse_labels, rate_series, read_dynamic_csv
    from llmbuild.plot.draw import dynamic_figure, save_png

    started = time.time()
    out = _check_png(args.output)
    _check_slos(args)
    labels = parse_labels(args.labels, args.input, "--labels")
    series = rate_series([read_dynamic_csv(p) for p in args.input], labels)
    fig = dynamic_figure(series, args.slo_ttft_ms, args.slo_tpot_ms, args.title)
    with atomic_file(out, "wb") as fh:
        save_png(fig, fh)
    provenance.write(
        out, command="plot dynamic", args=vars(args), inputs=args.input, started=started
    )
    print(f"wrote {out}: {len(series)} run(s), {sum(len(s.rate) for s in series)} rate(s)")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import csv

    from llmbuild.plot.data import (
        bench_series,
        pareto_front,
        parse_labels,
        read_bench_csv,
        sweep_points,
        sweep_table,
    )
    from llmbuild.plot.draw import bench_figure, pareto_figure, save_png

    started = time.time()
    out = _check_png(args.output)
    compare = _check_png(args.compare) if args.compare else None
    _check_slos(args)
    labels = parse_labels(args.labels, args.input, "--labels")
    tables = [read_bench_csv(p) for p in args.input]
    points = sweep_points(tables, labels)
    front = pareto_front(points)
    with atomic_file(out, "wb") as fh:
        save_png(pareto_figure(points, front, args.title), fh)
    written = [out]
    if compare is not None:
        title = f"{args.title or 'sweep'}: every run"
        fig = bench_figure(bench_series(tables, labels), args.slo_ttft_ms, args.slo_tpot_ms, title)
        with atomic_file(compare, "wb") as fh:
            save_png(fig, fh)
        written.append(compare)
    if args.table:
        columns, rows = sweep_table(tables, labels)
        with atomic_file(args.table) as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        written.append(Path(args.table))
    for path in written:
        provenance.write(
            path, command="plot sweep", args=vars(args), inputs=args.input, started=started
        )
    print(
        f"wrote {', '.join(map(str, written))}: {len(points)} cells of {len(tables)} run(s); "
        "Pareto front: "
        + "; ".join(f"{p.name} ({p.per_user:.3g}, {p.throughput:.3g})" for p in front)
    )
    return 0


def _loss(args: argparse.Namespace) -> int:
    from llmbuild.plot.data import parse_labels, read_train_log
    from llmbuild.plot.draw import loss_figure, save_png

    started = time.time()
    out = _check_png(args.output)
    labels = parse_labels(args.labels, args.input, "--labels")
    series = [s for p, lab in zip(args.input, labels, strict=True) for s in read_train_log(p, lab)]
    fig = loss_figure(series, args.title)
    with atomic_file(out, "wb") as fh:
        save_png(fig, fh)
    provenance.write(out, command="plot loss", args=vars(args), inputs=args.input, started=started)
    print(f"wrote {out}: {len(series)} series from {len(args.input)} log(s)")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from llmbuild.audit.page import render

    started = time.time()
    out = Path(args.output)
    text = render(args.input, args.gates)
    with atomic_file(out) as fh:
        fh.write(text)
    provenance.write(
        out,
        command="plot audit",
        args=vars(args),
        inputs=[*args.input, args.gates],
        started=started,
    )
    print(f"wrote {out}: lineage of {len(args.input)} plot(s) and the gate table")
    return 0


def _slo_flags(p: argparse.ArgumentParser) -> None:
    for what in ("ttft", "tpot"):
        p.add_argument(
            f"--slo-{what}-ms",
            type=float,
            default=default(f"plot.slo_{what}_ms"),
            help=f"{what.upper()} SLO line, ms (default %(default)s)",
        )


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("bench", help="p90 TTFT/TPOT vs concurrency with SLO lines, throughput")
    p.add_argument("--input", nargs="+", required=True, help="static benchmark CSV(s), one a run")
    p.add_argument("--labels", default=None, help="comma-separated, one per CSV")
    _slo_flags(p)
    p.add_argument("--title", default=None)
    p.add_argument("--output", required=True, help="PNG")
    p.set_defaults(func=_bench)

    p = verbs.add_parser(
        "dynamic", help="p90 TTFT/TPOT/E2EL and throughput vs request rate (dynamic CSVs)"
    )
    p.add_argument("--input", nargs="+", required=True, help="dynamic benchmark CSV(s), one a run")
    p.add_argument("--labels", default=None, help="comma-separated, one per CSV")
    _slo_flags(p)
    p.add_argument("--title", default=None)
    p.add_argument("--output", required=True, help="PNG")
    p.set_defaults(func=_dynamic)

    p = verbs.add_parser(
        "sweep",
        help="a sweep's Pareto front (throughput per user vs throughput), comparison, table",
        description="Static benchmark CSVs of a sweep, one per run (variant/serve setting/"
        "benchmark setting): the Pareto plot (--output), the 4-graph p90 comparison of every "
        "run (--compare) and every row with its coordinates and front membership (--table).",
    )
    p.add_argument("--input", nargs="+", required=True, help="static benchmark CSV(s), one a run")
    p.add_argument("--labels", default=None, help="comma-separated, one per CSV")
    _slo_flags(p)
    p.add_argument("--title", default=None, help="the sweep's name")
    p.add_argument("--output", required=True, help="Pareto plot, PNG")
    p.add_argument("--compare", default=None, help="4-graph comparison of every run, PNG")
    p.add_argument("--table", default=None, help="CSV of every row with its coordinates")
    p.set_defaults(func=_sweep)

    p = verbs.add_parser("loss", help="loss and tokens/s vs step from training logs")
    p.add_argument("--input", nargs="+", required=True, help="training log JSONL(s)")
    p.add_argument("--labels", default=None, help="comma-separated, one per log")
    p.add_argument("--title", default=None)
    p.add_argument("--output", required=True, help="PNG")
    p.set_defaults(func=_loss)

    p = verbs.add_parser("audit", help="the report's audit page: plots' lineage, gate table")
    p.add_argument("--input", nargs="+", required=True, help="plots (PNG) whose lineage to draw")
    p.add_argument("--gates", required=True, help="gates/summary.json")
    p.add_argument("--output", required=True, help="HTML page")
    p.set_defaults(func=_audit)
