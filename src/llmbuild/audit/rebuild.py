"""`llmbuild audit --rebuild`: rerun the deterministic steps into a scratch directory and
compare their bytes with the build's.

Deterministic (same inputs, config and environment give the same bytes): the synthetic data,
the tiny model, tokenization, conversion both ways, training on CPU with fixed seeds (one
process per rank, the same thread count; its log is compared without the wall-clock fields),
quantization and the benchmark dataset. Not deterministic, and why:
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from llmbuild import provenance
from llmbuild.audit.checks import Finding
from llmbuild.audit.graph import Job, Workflow

DETERMINISTIC = (
    "synth_corpus",
    "synth_task",
    "tiny_model",
    "tokenize_pretrain",
    "tokenize_sft",
    "hf2mg",
    "train",
    "mg2hf",
    "quantize_scales",
    "quantize",
    "dataset_generate",
)
# proofs the deterministic steps wait for (rebuilt with them, not compared: they carry figures)
GATES_ON_THE_WAY = ("gate_parity_hf2mg", "gate_parity_mg2hf", "gate_train")
NOT_DETERMINISTIC = {
    "serve": "a running service; its endpoint file names a port and a process",
    "eval_accuracy": "answers through a live service (batch composition varies with timing)",
    "eval_summary": "summarises the service's answers",
    "bench_static": "measured latencies and throughput",
    "bench_dynamic": "measured latencies and throughput",
    "plot_bench": "draws measured figures",
    "plot_dynamic": "draws measured figures",
    "serve_sweep": "a running service; its endpoint file names a port and a process",
    "bench_sweep": "measured latencies and throughput",
    "plot_sweep": "draws measured figures",
    "plot_loss": "the log it draws carries per-step wall times",
    "gate_summary": "tabulates verdicts that carry measured figures",
    "env": "pip resolves and installs; the frozen list is compared instead",
}
__doc__ = (__doc__ or "") + "".join(f"\n- {k}: {v}" for k, v in NOT_DETERMINISTIC.items())
# Training logs are compared without their wall-clock fields: the losses, learning rates,
# gradient norms and token counts must be the same, the seconds cannot.
_TIMING = ("elapsed", "per_s", "seconds", "time")
_KEEP_OUT = {"results", "logs", ".snakemake", ".git"}


def scratch_tree(root: Path, scratch: Path) -> None:
    """A working directory that shares everything with ``root`` but its outputs."""
    scratch.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        if entry.name in _KEEP_OUT or (scratch / entry.name).exists():
            continue
        os.symlink(entry.resolve(), scratch / entry.name)


def rebuild(
    wf: Workflow,
    jobs: list[Job],
    scratch: Path | None = None,
    cores: int = 2,
    say=print,
) -> tuple[list[Finding], list[str]]:
    """(findings, the outputs that rebuilt bit-identical)."""
    chosen = [j for j in jobs if j.rule in DETERMINISTIC]
    targets = [o for j in chosen for o in j.outputs]
    if not targets:
        return [], []
    keep = scratch is not None
    scratch = Path(scratch or tempfile.mkdtemp(prefix="llmbuild-rebuild-"))
    scratch_tree(wf.directory, scratch)
    other = Workflow(
        directory=scratch,
        snakefile=wf.snakefile or str((wf.directory / "Snakefile").resolve()),
        configfiles=[str((wf.directory / c).resolve()) for c in wf.configfiles],
        config=wf.config,
    )
    say(f"rebuild: {len(chosen)} deterministic jobs into {scratch}")
    # only these rules may run: the environments are shared (linked), never rebuilt from here
    allowed = [*DETERMINISTIC, *GATES_ON_THE_WAY]
    cmd = [sys.executable, "-m", "snakemake", *other.args(), "--cores", str(cores)]
    cmd += ["--allowed-rules", *allowed, "--", *targets]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    findings: list[Finding] = []
    if proc.returncode:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        findings.append(Finding("rebuild", str(scratch), "run", f"the rebuild failed: {tail}"))
        return findings, []
    same: list[str] = []
    for job in chosen:
        for out in job.outputs:
            a, b = wf.directory / out, scratch / out
            if not b.exists():
                findings.append(Finding("rebuild", out, "output", "not rebuilt"))
                continue
            fa, fb = _digests(a), _digests(b)
            if fa == fb:
                same.append(out)
                continue
            differ = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
            findings.append(
                Finding(
                    "rebuild",
                    out,
                    ", ".join(d or "bytes" for d in differ[:4]),
                    f"rule {job.rule} rebuilt differently ({len(differ)} file(s) differ)",
                )
            )
    if not keep and not findings:
        shutil.rmtree(scratch, ignore_errors=True)
    return findings, same


def _digests(path: Path) -> dict[str, str]:
    """Per-file digests, a training log's taken without its timing fields."""
    import hashlib
    import json

    out = provenance.file_digests(path)
    for rel in out:
        f = path / rel if rel else path
        if f.name.endswith("train_log.jsonl"):
            h = hashlib.sha256()
            for line in f.read_text().splitlines():
                rec = json.loads(line)
                kept = {k: v for k, v in rec.items() if not any(t in k for t in _TIMING)}
                h.update(json.dumps(kept, sort_keys=True).encode() + b"\n")
            out[rel] = "log:" + h.hexdigest()
    return out
