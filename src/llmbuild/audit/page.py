"""The report's audit page: the lineage of each plot (from the provenance records) and the
table of every gate verdict, as one HTML file the Snakemake report shows (category Audit)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from llmbuild.audit import lineage

_STYLE = (
    "body{font-family:sans-serif;font-size:14px} ul{list-style:none;padding-left:1.2em;"
    "border-left:1px solid #ccc} code{font-size:13px} td,th{padding:2px 8px;text-align:left}"
    " .pass{color:#176117} .fail,.warn,.skipped{color:#a11}"
)


def render(plots: list[str], gates_summary: str, root: Path = Path(".")) -> str:
    parts = [f"<html><head><meta charset='utf-8'><style>{_STYLE}</style></head><body>"]
    parts.append("<h2>Lineage of each plot</h2>")
    for plot in plots:
        tree = lineage.trace(plot, root)
        raw = lineage.raw_inputs(tree)
        parts.append(f"<h3>{html.escape(plot)}</h3>")
        parts.append(
            "<p>raw inputs: "
            + ", ".join(f"<code>{html.escape(n.path)}</code>" for n in raw)
            + "</p>"
        )
        parts.append(f"<ul>{lineage.html_tree(tree)}</ul>")
    parts.append("<h2>Gates</h2><table><tr><th>gate</th><th>subject</th><th>status</th>")
    parts.append("<th>metric</th><th>figure</th><th>threshold</th><th>detail</th></tr>")
    verdicts = json.loads((root / gates_summary).read_text()).get("verdicts", [])
    for v in verdicts:
        cells = [v.get(k) for k in ("gate", "subject", "status", "metric", "figure", "threshold")]
        row = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
        status = html.escape(str(v.get("status")))
        row = row.replace(f"<td>{status}</td>", f"<td class='{status}'>{status}</td>", 1)
        parts.append(f"<tr>{row}<td>{html.escape(str(v.get('detail', '')))}</td></tr>")
    parts.append("</table>")
    parts.append(
        "<p>Check the whole build (records, bytes, drift, gates) with "
        "<code>llmbuild audit</code>; <code>llmbuild audit --lineage TARGET</code> traces any "
        "artifact.</p></body></html>"
    )
    return "\n".join(parts)
