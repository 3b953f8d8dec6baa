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
    for flag, v in (("--slo-ttft-ms", args.slo_ttft_ms), ("--slo-tpot-ms", args.slo_tpot_ms)):
        if v is not None and not v > 0:
            raise UserError(f"must be > 0 ms, got {v}", field=flag)
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


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("bench", help="p90 TTFT/TPOT vs concurrency with SLO lines, throughput")
    p.add_argument("--input", nargs="+", required=True, help="static benchmark CSV(s), one a run")
    p.add_argument("--labels", default=None, help="comma-separated, one per CSV")
    for what in ("ttft", "tpot"):
        p.add_argument(
            f"--slo-{what}-ms",
            type=float,
            default=default(f"plot.slo_{what}_ms"),
            help=f"{what.upper()} SLO line, ms (default %(default)s)",
        )
    p.add_argument("--title", default=None)
    p.add_argument("--output", required=True, help="PNG")
    p.set_defaults(func=_bench)

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
