"""`llmbuild audit [TARGET...]` and `llmbuild why TARGET`.

audit: every job of the targets' graph (the default target when none) is checked: its outputs
have provenance records (record); each consumer's recorded input digest is its producer's
recorded output digest, and a raw input's is its digest now (closure); the recorded arguments
are the ones the config gives now (params); each artifact's bytes match its record (bytes;
``--sample F`` hashes a fraction F of a directory's files); the llmbuild source, the
environment's packages and the rule's code are what they were (drift); every gate verdict on
the path is present and passed (gates). ``--lineage`` prints each target's tree back to raw
inputs; ``--rebuild`` reruns the deterministic steps into a scratch directory and compares
bytes. Exit 1 on any finding, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llmbuild.errors import UserError

USAGE_GROUPS = {
    "audit": "check a build's records, bytes, drift and gates",
    "why": "why would a target rerun",
}


def _workflow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--directory", "-d", default=".", help="the build's working directory")
    p.add_argument(
        "--snakefile", "-s", default=None, help="the Snakefile (default: the directory's)"
    )
    p.add_argument("--configfile", nargs="+", default=[], help="config files, as given to the run")
    p.add_argument(
        "--config", nargs="+", default=[], help="KEY=VALUE overrides, as given to the run"
    )
    p.add_argument("--cores", type=int, default=2, help="cores, as given to the run")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")


def audit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmbuild audit", description=__doc__.split("\n\n")[1])
    p.add_argument("targets", nargs="*", metavar="TARGET", help="files of the graph (default: all)")
    _workflow_args(p)
    p.add_argument(
        "--sample", type=float, default=None, help="hash this fraction of each directory's files"
    )
    p.add_argument("--seed", type=int, default=0, help="which files --sample picks")
    p.add_argument("--lineage", action="store_true", help="print each target's lineage tree")
    p.add_argument(
        "--row",
        dest="rows",
        action="append",
        default=[],
        metavar="CSV:N",
        help="a benchmark CSV's row N (1 = first data row): its values and its lineage",
    )
    p.add_argument(
        "--rebuild", action="store_true", help="rebuild deterministic steps and compare bytes"
    )
    p.add_argument(
        "--scratch", default=None, help="where --rebuild builds (kept; default: a temp dir)"
    )
    return p


def why_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmbuild why", description="why would TARGET rerun: the field that changed"
    )
    p.add_argument("targets", nargs="*", metavar="TARGET", help="files of the graph (default: all)")
    _workflow_args(p)
    return p


def _wf(args: argparse.Namespace):
    from llmbuild.audit.graph import Workflow

    d = Path(args.directory)
    if not d.is_dir():
        raise UserError(f"{d}: no such build directory (--directory)")
    return Workflow(d, args.snakefile, args.configfile, args.config, args.cores)


def audit(argv: list[str]) -> int:
    from llmbuild.audit import checks, graph, lineage
    from llmbuild.audit.rebuild import rebuild

    args = audit_parser().parse_args(argv)
    if args.sample is not None and not 0 < args.sample <= 1:
        raise UserError(f"--sample {args.sample}: must be in (0, 1]")
    started = time.perf_counter()
    wf = _wf(args)
    jobs = graph.graph(wf, args.targets)
    auditor = checks.Auditor(wf.directory, jobs, sample=args.sample, seed=args.seed, src=wf.src())
    findings = auditor.run()
    identical: list[str] = []
    if args.rebuild:
        more, identical = rebuild(
            wf,
            jobs,
            Path(args.scratch) if args.scratch else None,
            args.cores,
            say=(lambda s: print(s, file=sys.stderr)),
        )
        findings += more
        auditor.counts["rebuild"] = len(identical) + len(more)
    targets = args.targets or _final(jobs)
    trees = [lineage.trace(t, wf.directory) for t in targets] if args.lineage else []
    rows = {r: _csv_row(wf.directory, r) for r in args.rows}
    for row in args.rows:
        trees.append(lineage.trace(row.rsplit(":", 1)[0], wf.directory))
    seconds = time.perf_counter() - started
    if args.json:
        doc = {
            "ok": not findings,
            "jobs": len(jobs),
            "seconds": round(seconds, 3),
            "checked": auditor.counts,
            "findings": [f.as_dict() for f in findings],
            "rebuilt_identical": identical,
            "lineage": [t.as_dict() for t in trees],
            "rows": rows,
        }
        print(json.dumps(doc, indent=2))
    else:
        for line in _report(jobs, auditor.counts, findings, identical, seconds):
            print(line)
        for row, values in rows.items():
            print(f"{row}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        for t in trees:
            print("\n".join(lineage.text(t)))
    return 1 if findings else 0


def _csv_row(root: Path, spec: str) -> dict:
    import csv

    path, _, n = spec.rpartition(":")
    if not path or not n.isdigit() or int(n) < 1:
        raise UserError(f"--row {spec}: expected FILE.csv:N with N >= 1")
    try:
        with open(root / path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise UserError(f"--row {spec}: {exc.strerror}") from None
    if int(n) > len(rows):
        raise UserError(f"--row {spec}: {path} has {len(rows)} data rows")
    return rows[int(n) - 1]


def _final(jobs) -> list[str]:
    """Outputs nobody consumes: the graph's final artifacts."""
    consumed = {i for j in jobs for i in j.inputs}
    return [
        o
        for j in jobs
        if j.rule != "env"
        for o in j.outputs
        if o not in consumed and "/gates/" not in o
    ]


def _report(jobs, counts, findings, identical, seconds) -> list[str]:
    from llmbuild.audit.checks import CHECKS

    lines = [f"audit: {len(jobs)} jobs in {seconds:.1f} s"]
    for check in CHECKS:
        mine = [f for f in findings if f.check == check]
        if check == "rebuild" and not counts.get("rebuild"):
            continue
        state = f"FAIL {len(mine)}" if mine else "ok"
        extra = f", {len(identical)} bit-identical" if check == "rebuild" else ""
        lines.append(f"  {check:<8} {state} ({counts.get(check, 0)} checked{extra})")
        lines += [f"    {f.line()}" for f in mine]
    lines.append(f"audit: {len(findings)} finding(s)" if findings else "audit: clean")
    return lines


def why(argv: list[str]) -> int:
    from llmbuild.audit import why as W

    args = why_parser().parse_args(argv)
    wf = _wf(args)
    causes = W.why(wf, args.targets, str(wf.src()))
    if args.json:
        print(json.dumps([c.as_dict() for c in causes], indent=2))
    else:
        print("\n".join(W.text(causes, args.targets)))
    return 0


def main(command: str, argv: list[str]) -> int:
    try:
        return audit(argv) if command == "audit" else why(argv)
    except UserError as exc:
        sys.stderr.write(f"llmbuild {command}: error: {exc}\n")
        return 2
