"""`llmbuild why TARGET`: for each job a run of TARGET would execute, the field-level change
that causes it, not only Snakemake's category.

Snakemake's dry run says which jobs rerun and the category (params, code, updated input, ...);
this names the field: the argument and config key with both values (the recorded command, from
Snakemake's metadata or the provenance record, parsed by llmbuild's parser against the one the
config makes now), an input file's digest then and now, the source file, the environment pin.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmbuild import provenance
from llmbuild.audit import records as R
from llmbuild.audit.graph import Job, Workflow, dry_run, metadata, parse_command
from llmbuild.sources import STAMP_DIR, read_stamp


@dataclass
class Cause:
    rule: str
    output: str
    category: str  # Snakemake's reason
    fields: list[str] = field(default_factory=list)  # what changed, field by field
    upstream: list[str] = field(default_factory=list)  # inputs rebuilt by other planned jobs

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _files(reason: str, label: str) -> list[str]:
    m = re.search(re.escape(label) + r": (.*?)(?:; [A-Z]|$)", reason)
    return [f.strip() for f in m.group(1).split(",")] if m else []


def explain(job: Job, root: Path, planned: dict[str, Job], src: str) -> Cause:
    out = job.outputs[0]
    cause = Cause(job.rule, out, job.reason)
    rec = R.load(out, root)
    meta = metadata(root, out)
    reason = job.reason
    for f in _files(reason, "Missing output files"):
        if job.service:  # an endpoint file lives only while its consumers run
            cause.upstream.append(f"(a service, started for the consumers that rerun: {f})")
        else:
            cause.fields.append(f"output {f} is missing")
    for f in _files(reason, "Input files updated by another job"):
        by = planned.get(f)
        cause.upstream.append(f"{f} (rule {by.rule})" if by else f)
    for f in _files(reason, "Updated input files"):
        cause.fields.append(_input_change(f, rec, root, src, out))
    if "Params have changed" in reason or "Code has changed" in reason:
        was = parse_command(meta.get("shellcmd")) if meta else None
        if was is None and rec is not None:
            was = rec.get("arguments")
        now = parse_command(job.shellcmd)
        if was and now:
            for arg, a, b in R.args_diff(was, now):
                key = R.config_key(arg, job.rule, job.outputs)
                where = f" (config {key})" if key else ""
                cause.fields.append(f"--{arg.replace('_', '-')}: {a!r} -> {b!r}{where}")
    if "Code has changed" in reason:
        recorded = (meta or {}).get("code")
        cause.fields.append(
            f"rule {job.rule}'s code changed since the run"
            + (f" (it was: {recorded[:160]})" if recorded else "")
        )
    if "Set of input files has changed" in reason and meta:
        before, now_in = set(meta.get("input") or []), set(job.inputs)
        added, removed = sorted(now_in - before), sorted(before - now_in)
        cause.fields.append(f"inputs added {added[:4]}, removed {removed[:4]}")
    if "Software environment" in reason:
        cause.fields.append("the rule's software environment definition changed")
    if job.rule == "env" and rec is None:
        cause.fields += _pin_changes(out, root)
    return cause


def _input_change(path: str, rec: dict | None, root: Path, src: str, out: str) -> str:
    """One line: how an input newer than the output differs from what was recorded."""
    if path.endswith(".txt") and path.startswith("envs/"):
        return f"{path} changed (the environment's pins)"
    if path.endswith("ready.json") and ".envs/" in path:
        marker = root / path
        return f"{path}: environment rebuilt ({_env_summary(marker)})"
    if path.startswith(STAMP_DIR + "/"):
        return _source_change(path, rec, root, src, out)
    was = ((rec or {}).get("inputs") or {}).get(path)
    p = root / path
    now = provenance.path_digest(p) if p.exists() else None
    if was and now and was != now:
        return f"input {path}: digest {was[:12]} -> {now[:12]}"
    if was and was == now:
        return f"input {path}: newer date, same digest as recorded"
    return f"input {path}: newer than the output"


def _source_change(stamp: str, rec: dict | None, root: Path, src: str, out: str) -> str:
    """The source files of a group's stamp newer than the output, each with its digest in the
    output's record (what its step imported) and now."""
    try:
        made = (root / out).stat().st_mtime
        now = read_stamp(root / stamp)
    except OSError:
        return f"{stamp}: llmbuild's sources of this step changed"
    was = (rec or {}).get("source") or {}
    lines = []
    for rel, digest in now.items():
        path = Path(src) / rel
        if not path.is_file() or path.stat().st_mtime <= made:
            continue
        if rel in was and was[rel] != digest:
            lines.append(
                f"source {_shown(src, rel)}: content changed ({was[rel][:12]} -> {digest[:12]})"
            )
        elif rel in was:
            lines.append(f"source {_shown(src, rel)}: newer date, same content as recorded")
        else:
            lines.append(f"source {_shown(src, rel)} changed")
    return "; ".join(lines[:4]) or f"{stamp}: llmbuild's sources of this step changed"


def _shown(src: str, rel: str) -> str:
    """src/llmbuild/x.py as the repository names it (the source directory relative to here)."""
    return os.path.relpath(Path(src) / rel) if Path(src).is_absolute() else f"{src}/{rel}"


def _env_summary(marker: Path) -> str:
    import json

    try:
        return "python " + json.loads(marker.read_text()).get("python", "?")
    except (OSError, ValueError):
        return "unreadable marker"


def _pin_changes(marker: str, root: Path) -> list[str]:
    import json

    path = root / marker
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    spec = root / rec.get("spec", "")
    if not spec.is_file():
        return []
    built = R.frozen(rec.get("packages", []))
    return [
        f"{rec['spec']}: {n} {built.get(n, '(absent)')} -> {v}"
        for n, v in sorted(R.spec_pins(spec).items())
        if not R.same_version(v, built.get(n))
    ]


def why(wf: Workflow, targets: list[str], src: str) -> list[Cause]:
    jobs = dry_run(wf, targets)
    planned = {o: j for j in jobs for o in j.outputs}
    causes = [explain(j, wf.directory, planned, src) for j in jobs]
    # root causes first: jobs that rerun for a reason of their own
    causes.sort(key=lambda c: (bool(c.upstream) and not c.fields, c.rule, c.output))
    return causes


def text(causes: list[Cause], targets: list[str]) -> list[str]:
    what = " ".join(targets) or "the default target"
    if not causes:
        return [f"why: nothing would rerun for {what}"]
    lines = [f"why: {len(causes)} job(s) would rerun for {what}"]
    for c in causes:
        lines.append(f"- {c.rule} -> {c.output}")
        for f in c.fields:
            lines.append(f"    {f}")
        if c.upstream and not c.fields:
            lines.append("    because its input(s) are rebuilt: " + ", ".join(c.upstream[:4]))
        if not c.fields and not c.upstream:
            lines.append(f"    snakemake: {c.category}")
    return lines
