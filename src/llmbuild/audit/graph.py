"""The graph as Snakemake sees it: its jobs, their commands, and what it recorded of each run.

Snakemake is asked, not re-implemented: ``--detailed-summary`` gives every job of the targets'
graph (outputs, inputs, the shell command the config makes now, its own rerun category) and a
dry run (``-n -p``) what would rerun and why. ``.snakemake/metadata`` holds, per output, what it
recorded at the last run (the shell command, the rule's code, input checksums), read here as the
files Snakemake writes. Commands are parsed with llmbuild's own argument parser, so a difference
is named by its flag.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmbuild.errors import UserError


@dataclass
class Job:
    rule: str
    outputs: list[str]
    inputs: list[str] = field(default_factory=list)
    shellcmd: str | None = None
    status: str = ""  # Snakemake's category ("ok", "params changed", "missing", ...)
    reason: str = ""  # a dry run's "reason:" line
    service: bool = False


@dataclass
class Workflow:
    """Where and how Snakemake runs: the arguments every call here passes."""

    directory: Path = Path(".")
    snakefile: str | None = None
    configfiles: Sequence[str] = ()
    config: Sequence[str] = ()
    cores: int = 2  # as the run had them: rules' thread counts reach their commands

    def src(self) -> Path:
        """The llmbuild source tree the workflow runs (``src/`` beside its Snakefile)."""
        snakefile = Path(self.snakefile) if self.snakefile else self.directory / "Snakefile"
        src = snakefile.resolve().parent / "src"
        if (src / "llmbuild").is_dir():
            return src
        from llmbuild.sources import PACKAGE_DIR

        return PACKAGE_DIR.parent

    def args(self) -> list[str]:
        out = ["--directory", str(self.directory)]
        if self.snakefile:
            out += ["--snakefile", self.snakefile]
        if self.configfiles:
            out += ["--configfile", *self.configfiles]
        if self.config:
            out += ["--config", *self.config]
        return out + ["--resources", "serve_slots=1"]

    def snakemake(self, *args: str, timeout: float = 600) -> str:
        try:
            import snakemake  # noqa: F401
        except ImportError:
            raise UserError(
                "snakemake is not importable here; run this from the driver environment "
                "(.venv/bin/llmbuild, made by `make setup`)"
            ) from None
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            *self.args(),
            "--nolock",
            "--cores",
            str(self.cores),
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise UserError("snakemake could not plan the graph: " + " | ".join(tail))
        return proc.stdout


SUMMARY_HEADER = "output_file\tdate\trule\tlog-file(s)\tinput-file(s)\tshellcmd\tstatus\tplan"


def summary(wf: Workflow, targets: Sequence[str] = ()) -> list[Job]:
    """Every job of ``targets``' graph (the default target when none), finished or not."""
    out = wf.snakemake("--detailed-summary", *targets)
    if SUMMARY_HEADER not in out:
        raise UserError("snakemake --detailed-summary printed no table")
    jobs: dict[tuple, Job] = {}
    for line in out.split(SUMMARY_HEADER, 1)[1].splitlines():
        cols = line.split("\t")
        if len(cols) != 8:
            continue
        output, _date, rule, _log, inputs, shellcmd, status, _plan = cols
        cmd = None if shellcmd in ("", "-", "None") else shellcmd
        key = (rule, cmd if cmd else output)
        job = jobs.get(key)
        if job is None:
            ins = [p for p in inputs.split(",") if p and p != "-"]
            job = jobs[key] = Job(rule, [], ins, cmd, status)
            job.service = status == "service file"
        job.outputs.append(output)
    return list(jobs.values())


def graph(wf: Workflow, targets: Sequence[str] = ()) -> list[Job]:
    """Every job of ``targets``' graph with the command the config makes now, and Snakemake's
    status of its outputs (what ``--detailed-summary`` says: "ok", "params changed", ...).
    The summary's own shell command is the recorded one, hence the forced dry run beside it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        planned = pool.submit(dry_run, wf, targets, True)
        status = {o: j.status for j in summary(wf, targets) for o in j.outputs}
        jobs = planned.result()
    for job in jobs:
        job.status = next((status[o] for o in job.outputs if o in status), "")
        job.service = job.service or job.status == "service file"
    return jobs


def dry_run(wf: Workflow, targets: Sequence[str] = (), forceall: bool = False) -> list[Job]:
    """The jobs a run of ``targets`` would execute now, each with its reason (every job of
    the graph with ``forceall``)."""
    force = ["--forceall"] if forceall else []
    out = wf.snakemake("--dry-run", "--printshellcmds", *force, *targets)
    jobs: list[Job] = []
    job: Job | None = None
    for line in out.splitlines():
        text = line.strip()
        if re.fullmatch(r"(localrule|rule) \w+:", text):
            job = Job(text.split()[1][:-1], [])
            jobs.append(job)
        elif job is None:
            continue
        elif text.startswith("output: "):
            outs = [p.strip() for p in text.removeprefix("output: ").split(",")]
            job.service = any(o.endswith(" (service)") for o in outs)
            job.outputs = [o.removesuffix(" (service)") for o in outs]
        elif text.startswith("input: "):
            job.inputs = [p.strip() for p in text.removeprefix("input: ").split(",")]
        elif text.startswith("reason: "):
            job.reason = text.removeprefix("reason: ")
        elif line.startswith("Shell command: "):
            job.shellcmd = line.removeprefix("Shell command: ")
    return [j for j in jobs if j.rule != "all"]


def metadata(directory: Path, output: str) -> dict | None:
    """What Snakemake recorded of the run that made ``output`` (None if nothing)."""
    b64 = base64.urlsafe_b64encode(output.encode()).decode()
    try:
        max_len = os.pathconf(directory / ".snakemake" / "metadata", "PC_NAME_MAX") or 255
    except OSError:
        max_len = 255
    parts = [b64[i : i + max_len - 1] for i in range(0, len(b64), max_len - 1)]
    parts = ["@" + s for s in parts[:-1]] + [parts[-1]]
    path = directory.joinpath(".snakemake", "metadata", *parts)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_ARITH = re.compile(r"\$\(\( (\d+) > (\d+) \? (\d+) / (\d+) : 1 \)\)")


def parse_command(shell: str | None) -> dict | None:
    """The llmbuild arguments of a rule's shell command, as the command itself parses them
    (normalised as a provenance record stores them); None for other commands."""
    if not shell:
        return None
    from llmbuild.cli import GROUPS, build_parser
    from llmbuild.provenance import redact

    shell = _ARITH.sub(lambda m: str(max(int(m[3]) // int(m[4]), 1)), shell)
    try:
        words = shlex.split(shell.split(" > ")[0])
    except ValueError:
        return None
    starts = [
        i + 1 for i, w in enumerate(words[:-1]) if w.endswith("llmbuild") and words[i + 1] in GROUPS
    ]
    if not starts:
        return None
    at = starts[0]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            parsed = build_parser(words[at]).parse_args(words[at:])
    except SystemExit:
        return None
    return json.loads(json.dumps(redact(vars(parsed)), default=str))
