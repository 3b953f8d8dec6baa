"""A training job killed with SIGKILL mid-run (Snakemake and all its processes) and rerun by
the graph resumes from its last save (train.save_interval) and writes the same bytes as the
uninterrupted build; run on a copy of the default build."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_gates import MODEL, ROOT, built, copy, snakemake  # noqa: F401

# green over a whole build (`make test-pending`, this stop); through the graph, a variant of
# tests/train's kill-and-resume (in make test): make test-full runs it (make test's time)
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def digests(root: Path) -> dict[str, str]:
    """Every file's sha256 but the records of when and how fast it was made."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("provenance.json", "train_log.jsonl")
    }


def losses(path: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines())]


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def test_killed_training_resumes_in_the_graph_to_the_same_bytes(copy):  # noqa: F811
    target = f"{MODEL}/pretrain/mcore"
    want = digests(copy / target)
    want_losses = losses(copy / target / "train_log.jsonl")
    interval = 50  # the schema's train.save_interval; the default pretrains 150 steps
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(copy)]
    cmd += ["--profile", str(ROOT / "profiles/local"), "--rerun-triggers", "mtime", "input"]
    cmd += ["code", "--forcerun", "train", "--", target]
    proc = subprocess.Popen(
        cmd, cwd=copy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    tracker = copy / f"{target}.partial/latest_checkpointed_iteration.txt"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if tracker.is_file() and tracker.read_text().strip() not in ("", "0"):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the graph finished before the kill"
    for pid in descendants(proc.pid):  # kill -9: Snakemake, the shell, the trainer
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    saved = int(tracker.read_text())
    assert saved % interval == 0 and not (copy / target).exists()

    snakemake(copy, "--unlock")  # the killed run's lock, as a user clears it
    rerun = snakemake(copy, target, timeout=1800)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    log = (copy / "logs/tiny-llama/pretrain/train.log").read_text()
    assert f"resuming results/tiny-llama/pretrain/mcore.partial at step {saved}/150" in log
    assert digests(copy / target) == want  # the same weights, optimizer state and records
    assert losses(copy / target / "train_log.jsonl") == want_losses  # every step once
