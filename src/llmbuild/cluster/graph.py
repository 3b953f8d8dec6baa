"""The graph's jobs as records, read from Snakemake's own plan (`snakemake -n -p`): rule,
wildcards, inputs, outputs, threads, resources and the shell command, exactly as a job would
run them. Services and the consumers that read their endpoint files are gathered into one
unit, as Snakemake's group job does (they must share a host: the endpoint is 127.0.0.1).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field

from llmbuild.errors import UserError


@dataclass
class Job:
    rule: str
    jobid: int
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    wildcards: dict[str, str] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    shell: str | None = None
    service: bool = False

    @property
    def mem_mb(self) -> int:
        return int(float(self.resources.get("mem_mb", "1000")))


_HEAD = re.compile(r"^\s*(localrule|rule) (\w+):\s*$")


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(", "):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_plan(text: str) -> list[Job]:
    """Jobs of a `snakemake -n -p` printout (one block per job, its shell command after)."""
    jobs: list[Job] = []
    job: Job | None = None
    for line in text.splitlines():
        head = _HEAD.match(line)
        if head:
            job = Job(rule=head.group(2), jobid=-1)
            jobs.append(job)
            continue
        if job is None:
            continue
        key, _, value = line.strip().partition(": ")
        if key == "input":
            job.inputs = value.split(", ")
        elif key == "output":
            job.service = "(service)" in value
            job.outputs = [v.replace(" (service)", "").strip() for v in value.split(", ")]
        elif key == "jobid":
            job.jobid = int(value)
        elif key == "wildcards":
            job.wildcards = _pairs(value)
        elif key == "threads":
            job.threads = int(value)
        elif key == "resources":
            job.resources = _pairs(value)
        elif line.startswith("Shell command: "):
            shell = line.removeprefix("Shell command: ")
            job.shell = None if shell == "None" else shell  # a script: rule
            job = None
    return [j for j in jobs if j.rule not in ("all", "envs")]


def units(jobs: list[Job]) -> list[list[Job]]:
    """Jobs to run as one unit each: a service with its consumers, or a job alone; in the
    plan's order with every unit after the units it reads from."""
    by_output = {o: j for j in jobs for o in j.outputs}
    service_of = {}
    for j in jobs:
        for i in j.inputs:
            src = by_output.get(i)
            if src is not None and src.service:
                service_of[j.jobid] = src.jobid
    groups: dict[int, list[Job]] = {}
    for j in jobs:
        key = j.jobid if j.service else service_of.get(j.jobid, j.jobid)
        groups.setdefault(key, []).append(j)
    for members in groups.values():  # the service first
        members.sort(key=lambda j: not j.service)
    unit_of = {j.jobid: key for key, members in groups.items() for j in members}
    deps = {
        key: {
            unit_of[by_output[i].jobid]
            for j in members
            for i in j.inputs
            if i in by_output and unit_of[by_output[i].jobid] != key
        }
        for key, members in groups.items()
    }
    ordered: list[list[Job]] = []
    done: set[int] = set()
    while len(done) < len(groups):
        ready = sorted(k for k in groups if k not in done and deps[k] <= done)
        if not ready:
            raise UserError("the plan has a dependency cycle between services and consumers")
        for k in ready:
            ordered.append(groups[k])
            done.add(k)
    return ordered


def plan(snakemake: str, configfiles: list[str], targets: list[str], extra: list[str]) -> str:
    """The whole graph's plan as Snakemake prints it (every job, as on a fresh volume).
    ``snakemake`` is the command to plan with, arguments allowed (e.g. ``-s``, ``-d``)."""
    cmd = [*shlex.split(snakemake), "-n", "-p", "--forceall", "--cores", "64"]
    if configfiles:
        cmd += ["--configfile", *configfiles]
    cmd += [*extra, *targets]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(
            f"{cmd[0]!r} not found; pass --snakemake (e.g. .venv/bin/snakemake)"
        ) from None
    if proc.returncode:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "error" in ln.lower()]
        raise UserError(f"planning the graph failed: {(lines or ['see snakemake -n'])[-1]}")
    return proc.stdout
