"""Lineage: an artifact traced back through the provenance records to raw inputs and the base
model, as a tree with digests. Records alone are enough (each names its inputs and their
digests, and each input's own record sits beside it), so a moved or copied tree can be traced
without Snakemake."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from llmbuild import provenance
from llmbuild.audit import records as R


@dataclass
class Node:
    path: str
    digest: str | None
    command: str | None  # what made it (None: a raw input)
    children: list[Node] = field(default_factory=list)
    repeated: bool = False  # shown in full elsewhere in the tree

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "digest": self.digest,
            "made_by": self.command,
            "inputs": [c.as_dict() for c in self.children],
            **({"repeated": True} if self.repeated else {}),
        }


def trace(artifact: str, root: Path, digest: str | None = None, seen: set | None = None) -> Node:
    seen = set() if seen is None else seen
    rec = R.load_any(artifact, root)
    if rec is None or "_unreadable" in (rec or {}):
        p = root / artifact
        now = digest or (provenance.path_digest(p) if p.exists() else None)
        return Node(artifact, now, None)
    node = Node(artifact, rec.get("output_digest") or digest, rec.get("command"))
    if artifact in seen:
        node.repeated = True
        return node
    seen.add(artifact)
    for inp, d in sorted((rec.get("inputs") or {}).items()):
        node.children.append(trace(inp, root, d, seen))
    return node


def raw_inputs(node: Node) -> list[Node]:
    if node.command is None:
        return [node]
    out: list[Node] = []
    for c in node.children:
        out += raw_inputs(c)
    return out


def text(node: Node, prefix: str = "", last: bool = True, top: bool = True) -> list[str]:
    made = f"  <- {node.command}" if node.command else "  (raw input)"
    if node.repeated:
        made = "  (see above)"
    digest = (node.digest or "missing")[:12]
    head = "" if top else prefix + ("`-- " if last else "|-- ")
    lines = [f"{head}{node.path}  {digest}{made}"]
    child_prefix = "" if top else prefix + ("    " if last else "|   ")
    for i, c in enumerate(node.children):
        lines += text(c, child_prefix, i == len(node.children) - 1, top=False)
    return lines


def html_tree(node: Node) -> str:
    made = html.escape(node.command or "raw input")
    if node.repeated:
        made = "shown above"
    head = (
        f"<code>{html.escape(node.path)}</code> <small>{(node.digest or 'missing')[:16]}"
        f" &larr; {made}</small>"
    )
    if not node.children:
        return f"<li>{head}</li>"
    inner = "".join(html_tree(c) for c in node.children)
    return f"<li>{head}<ul>{inner}</ul></li>"
