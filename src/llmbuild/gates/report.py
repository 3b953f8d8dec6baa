"""Every gate's verdict in one place: a summary JSON and an HTML table for the report."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from llmbuild.atomic import atomic_file
from llmbuild.gates.verdict import Verdict, read

_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "warn": "#9a6700", "skipped": "#57606a"}


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def html_table(verdicts: Sequence[Verdict]) -> str:
    rows = []
    for v in verdicts:
        colour = _COLOURS.get(v.status, "#000")
        cells = [
            html.escape(v.gate),
            html.escape(v.subject),
            f'<b style="color:{colour}">{html.escape(v.status)}</b>',
            html.escape(v.metric),
            _num(v.figure),
            _num(v.threshold),
            html.escape(v.detail),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>"
        for h in ("gate", "subject", "verdict", "figure", "value", "threshold", "detail")
    )
    failed = sum(v.status == "fail" for v in verdicts)
    warned = sum(v.status == "warn" for v in verdicts)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Gates</title>"
        "<style>table{border-collapse:collapse;font-family:sans-serif;font-size:14px}"
        "td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h3>Gates: {len(verdicts)} verdicts, {failed} failed, {warned} warnings</h3>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table></body></html>\n"
    )


def write_summary(
    paths: Sequence[str | Path],
    output: str | Path,
    html_out: str | Path,
    *,
    started: float,
    args: Mapping[str, object],
) -> list[Verdict]:
    from llmbuild import provenance

    verdicts = [read(p) for p in paths]
    with atomic_file(output) as fh:
        rows = [dict(v.as_dict(), file=str(p)) for v, p in zip(verdicts, paths, strict=True)]
        json.dump({"verdicts": rows}, fh, indent=2)
        fh.write("\n")
    with atomic_file(html_out) as fh:
        fh.write(html_table(verdicts))
    for out in (output, html_out):
        provenance.write(
            out, command="llmbuild gates summary", args=args, inputs=list(paths), started=started
        )
    for v in verdicts:
        print(v.line())
    return verdicts
