"""The audit's checks over a built graph: records, closure, parameters, bytes, drift, gates.

Each check yields findings (a failure each: check, artifact, field, one line). An untouched
build has none.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from llmbuild import provenance
from llmbuild.audit import records as R
from llmbuild.audit.graph import Job, parse_command
from llmbuild.sources import PACKAGE_DIR

CHECKS = ("record", "closure", "params", "bytes", "drift", "gates", "rebuild")
_FINE = {"ok", "service file", "no update", ""}  # Snakemake's statuses that plan nothing


@dataclass
class Finding:
    check: str
    artifact: str
    field: str
    message: str

    def line(self) -> str:
        return f"{self.artifact}: {self.field}: {self.message}"

    def as_dict(self) -> dict:
        return asdict(self)


class Auditor:
    def __init__(
        self,
        root: Path,
        jobs: list[Job],
        *,
        sample: float | None = None,
        seed: int = 0,
        src: Path | None = None,
    ):
        self.root = root
        self.jobs = jobs
        self.sample = sample
        self.rng = random.Random(seed)
        self.src = str(src or PACKAGE_DIR.parent)
        self.producer = {o: j for j in jobs for o in j.outputs}
        self.findings: list[Finding] = []
        self.counts = {c: 0 for c in CHECKS}  # what each check looked at
        self._digests: dict[str, str] = {}

    def fail(self, check: str, artifact: str, field: str, message: str) -> None:
        self.findings.append(Finding(check, artifact, field, message))

    def digest(self, path: str) -> str | None:
        if path not in self._digests:
            p = self.root / path
            self._digests[path] = provenance.path_digest(p) if p.exists() else None
        return self._digests[path]

    # -- the whole audit -------------------------------------------------------------------
    def run(self) -> list[Finding]:
        for job in self.jobs:
            if job.rule == "env":
                self.environment(job)
                continue
            self.snakemake_status(job)
            for out in job.outputs:
                self.artifact(job, out)
        return self.findings

    def snakemake_status(self, job: Job) -> None:
        status = job.status
        if status in _FINE or status == "missing":
            return
        if status == "rule implementation changed":
            self.fail(
                "drift", job.outputs[0], "rule", f"rule {job.rule}'s code changed since it ran"
            )
        elif status == "params changed":
            return  # named field by field by the params check
        else:
            self.fail(
                "drift", job.outputs[0], "snakemake", f"rule {job.rule} would rerun: {status}"
            )

    def artifact(self, job: Job, out: str) -> None:
        path = self.root / out
        self.counts["record"] += 1
        if not job.service and not path.exists():
            self.fail("record", out, "artifact", f"not built (rule {job.rule}); run the graph")
            return
        rec = R.load_any(out, self.root)
        if rec is None:
            self.fail("record", out, "provenance", "no provenance record")
            return
        if "_unreadable" in rec:
            self.fail("record", out, "provenance", f"{rec['_unreadable']} is not valid JSON")
            return
        self.params(job, out, rec)
        self.closure(out, rec)
        if not job.service:
            self.bytes(out, rec)
        self.drift(out, rec)
        if "/gates/" in out and not out.rsplit("/", 1)[-1].startswith("summary"):
            self.gate(out)

    # -- checks ------------------------------------------------------------------------------
    def params(self, job: Job, out: str, rec: dict) -> None:
        now = parse_command(job.shellcmd)
        if now is None or not isinstance(rec.get("arguments"), dict):
            return
        self.counts["params"] += 1
        for arg, was, is_now in R.args_diff(rec["arguments"], now):
            key = R.config_key(arg, job.rule, job.outputs)
            where = f" (config {key})" if key else ""
            flag = "--" + arg.replace("_", "-")
            self.fail(
                "params", out, flag, f"recorded {was!r}, the config gives {is_now!r} now{where}"
            )

    def closure(self, out: str, rec: dict) -> None:
        for inp, digest in (rec.get("inputs") or {}).items():
            self.counts["closure"] += 1
            producer = self.producer.get(inp)
            if producer is not None and producer.service:
                continue  # a live endpoint file (starting, ready, stopped), gone after the run
            if producer is not None and producer.rule != "env":
                said = (R.load(inp, self.root) or {}).get("output_digest")
                if said != digest:
                    self.fail(
                        "closure",
                        out,
                        f"inputs[{inp}]",
                        f"recorded digest {_short(digest)}, but {inp}'s own record says "
                        f"{_short(said)}",
                    )
            elif producer is None:
                now = self.digest(inp)
                if now != digest:
                    self.fail(
                        "closure",
                        out,
                        f"inputs[{inp}]",
                        f"raw input recorded as {_short(digest)}, is {_short(now)} now",
                    )

    def bytes(self, out: str, rec: dict) -> None:
        want = rec.get("output_digest")
        if want is None:
            return
        self.counts["bytes"] += 1
        path = self.root / out
        files = rec.get("output_files")
        if isinstance(files, dict) and path.is_dir():
            now = {rel for rel, _ in provenance._content_files(path)}
            if set(files) != now:
                extra, gone = sorted(now - set(files)), sorted(set(files) - now)
                self.fail("bytes", out, "files", f"added {extra[:3]}, removed {gone[:3]}")
                return
            names = sorted(files)
            if self.sample is not None and self.sample < 1:
                k = max(1, round(len(names) * self.sample))
                names = sorted(self.rng.sample(names, min(k, len(names))))
            for rel in names:
                if provenance.file_digest(path / rel) != files[rel]:
                    self.fail(
                        "bytes", out, rel, f"digest differs from the record ({_short(files[rel])})"
                    )
            return
        now = self.digest(out)
        if now != want:
            self.fail(
                "bytes", out, "output_digest", f"recorded {_short(want)}, is {_short(now)} now"
            )

    def drift(self, out: str, rec: dict) -> None:
        changed = [
            rel for rel, d in (rec.get("source") or {}).items() if R.source_now(self.src, rel) != d
        ]
        self.counts["drift"] += 1
        if changed:
            self.fail(
                "drift",
                out,
                "source",
                f"{len(changed)} llmbuild source file(s) changed since it was made: "
                + ", ".join(changed[:4]),
            )
        prefix = R.env_prefix(rec.get("executable"))
        if prefix and isinstance(rec.get("packages"), dict):
            now = R.env_packages(str(self.root / prefix) if not prefix.startswith("/") else prefix)
            if now is not None:
                diff = R.packages_diff(rec["packages"], now)
                if diff:
                    self.fail(
                        "drift",
                        out,
                        "environment",
                        f"{prefix} differs from what it was made with: " + "; ".join(diff[:4]),
                    )

    def environment(self, job: Job) -> None:
        marker = job.outputs[0]
        path = self.root / marker
        self.counts["drift"] += 1
        if not path.is_file():
            self.fail("record", marker, "artifact", "environment not built; run `make envs`")
            return
        rec = json.loads(path.read_text())
        spec = self.root / rec.get("spec", "")
        built = R.frozen(rec.get("packages", []))
        if spec.is_file():
            pins = R.spec_pins(spec)
            wrong = [
                f"{n}=={v} (built with {built.get(n, 'none')})"
                for n, v in sorted(pins.items())
                if not R.same_version(v, built.get(n))
            ]
            if wrong:
                self.fail(
                    "drift",
                    marker,
                    f"pins[{rec['spec']}]",
                    f"{rec['spec']} pins " + ", ".join(wrong[:4]) + "; rebuild the environment",
                )
        now = R.env_packages(str(path.parent))
        if now is not None:
            diff = R.packages_diff(
                built, {k.replace("_", "-"): v for k, v in now.items()}, frozen=True
            )
            if diff:
                self.fail(
                    "drift",
                    marker,
                    "packages",
                    "installed now differs from the frozen list: " + "; ".join(diff[:4]),
                )

    def gate(self, out: str) -> None:
        self.counts["gates"] += 1
        try:
            verdict = json.loads((self.root / out).read_text())
        except (OSError, ValueError) as exc:
            self.fail("gates", out, "verdict", f"unreadable: {exc}")
            return
        status = verdict.get("status")
        if status != "pass":
            self.fail("gates", out, "status", f"{status}: {verdict.get('detail', '')}".strip())


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "none"
