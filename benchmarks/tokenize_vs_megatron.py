"""How fast is `llmbuild data tokenize` against Megatron-LM's own tools/preprocess_data.py?

Both tokenize the same English-like JSONL (made deterministically, default 50 MB; see
tokenize_corpus.py) with the same 32k byte-level BPE tokenizer (HF, trained on it), 2 workers,
the peer with ``--append-eod``; they run alternately ``--runs`` times. Prints the median wall
times, tokens/s, the ratio, the peak RSS of each (summed over the process tree, sampled), and
whether the two outputs are byte-identical; then times the instruction (SFT) path on an
Alpaca set from the same words (as large as the corpus unless ``--sft-mb``: start-up is a fixed
cost) against the pretraining path, in the same rounds.

The peer is Megatron-LM at tag core_v0.16.1 (the version the train stack pins), run from a
checkout with the train environment's Python. It imports its own megatron/training package,
which needs ``six`` and ``triton`` (neither is in envs/train.txt: training never needs them);
they are installed with pip into WORK/peer-site, on the peer's PYTHONPATH only. Run:

    git clone --depth 1 --branch core_v0.16.1 https://github.com/NVIDIA/Megatron-LM /tmp/megatron-lm
    nice -n 5 .envs/train/bin/python benchmarks/tokenize_vs_megatron.py \\
        --megatron /tmp/megatron-lm [--mb 50] [--sft-mb MB] [--runs 3] [--workers 2]

Compare figures only as ratios from one run (medians): the machine may be shared.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(Path(__file__).resolve().parent)]

import tokenize_corpus  # noqa: E402


def peak_rss_run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds of the whole process tree, peak RSS in bytes summed over
    the process tree, sampled every 50 ms, and what it printed)."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = [0]

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while proc.poll() is None:
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    total += p.memory_info().rss
            except psutil.Error:
                pass
            peak[0] = max(peak[0], total)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(after, f) - getattr(before, f) for f in ("ru_utime", "ru_stime"))
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    return wall, cpu, peak[0], out


def peer_env(work: Path) -> dict[str, str]:
    """The peer's PYTHONPATH: six and triton for its megatron.training imports."""
    site = work / "peer-site"
    if not (site / "six.py").is_file() or not (site / "triton").is_dir():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
        print("installing the peer's imports:", " ".join(cmd + ["six", "triton"]), flush=True)
        subprocess.run(cmd + ["six", "triton"], check=True)
    return {**os.environ, "PYTHONPATH": str(site)}


def prepare(work: Path, mb: float, sft_mb: float) -> tuple[Path, Path, Path]:
    work.mkdir(parents=True, exist_ok=True)
    corpus, tok, sft = (
        work / f"corpus-{mb:g}mb.jsonl",
        work / "tok32k",
        work / f"sft-{sft_mb:g}mb.jsonl",
    )
    if not corpus.exists():
        print(f"writing {corpus} ...", flush=True)
        tokenize_corpus.write_corpus(corpus, mb)
    if not tok.exists():
        print(f"training the 32k tokenizer into {tok} ...", flush=True)
        tokenize_corpus.write_tokenizer(corpus, tok)
    if not sft.exists():
        tokenize_corpus.write_alpaca(sft, sft_mb)
    return corpus, tok, sft


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megatron", required=True, help="Megatron-LM checkout at core_v0.16.1")
    ap.add_argument("--work", default="/tmp/llmbuild-tokenize-bench")
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--sft-mb", type=float, default=None, help="default: --mb")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    work = Path(a.work).resolve()
    tool = Path(a.megatron).resolve() / "tools" / "preprocess_data.py"
    if not tool.is_file():
        sys.exit(f"{tool}: not found; pass --megatron a Megatron-LM checkout (core_v0.16.1)")
    corpus, tok, sft = prepare(work, a.mb, a.sft_mb or a.mb)
    env = peer_env(work)
    llmbuild = [sys.executable, "-m", "llmbuild", "data", "tokenize", "--tokenizer", str(tok)]
    llmbuild += ["--workers", str(a.workers), "--seq-length", "16384"]
    commands = {
        "megatron": (
            [sys.executable, str(tool), "--input", str(corpus), "--output-prefix"],
            ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tok)]
            + ["--append-eod", "--workers", str(a.workers), "--log-interval", "100000000"],
            env,
        ),
        "llmbuild": (
            llmbuild + ["--kind", "pretrain", "--input", str(corpus), "--output"],
            [],
            dict(os.environ),
        ),
        "llmbuild sft": (
            llmbuild
            + ["--kind", "sft", "--input", str(sft), "--overlong", "truncate"]
            + ["--output"],
            [],
            dict(os.environ),
        ),
    }
    walls: dict[str, list[float]] = {k: [] for k in commands}
    cpus: dict[str, list[float]] = {k: [] for k in commands}
    rss: dict[str, int] = dict.fromkeys(commands, 0)
    engines: dict[str, str] = {}
    for r in range(a.runs):
        for name, (head, tail, run_env) in commands.items():
            out = work / "out" / name.replace(" ", "-")
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            target = str(out / "p") if name == "megatron" else str(out / "shards")
            wall, cpu, peak, printed = peak_rss_run(head + [target] + tail, run_env)
            for text in printed.splitlines():
                if "encoded with" in text:
                    engines[name] = text.split("encoded with", 1)[1].strip()
            walls[name].append(wall)
            cpus[name].append(cpu)
            rss[name] = max(rss[name], peak)
            print(
                f"run {r + 1} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU, "
                f"peak RSS {peak / 2**20:.0f} MiB",
                flush=True,
            )
    pre = json.loads((work / "out/llmbuild/shards/meta.json").read_text())["stats"]["tokens"]
    sft_tokens = json.loads((work / "out/llmbuild-sft/shards/meta.json").read_text())["stats"]
    same = all(
        filecmp.cmp(
            work / f"out/megatron/p_text_document{ext}",
            work / f"out/llmbuild/shards/text_document{ext}",
            shallow=False,
        )
        for ext in (".bin", ".idx")
    )
    med = {k: statistics.median(v) for k, v in walls.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    tokens = {"megatron": pre, "llmbuild": pre, "llmbuild sft": sft_tokens["tokens"]}
    rate = {k: tokens[k] / med[k] for k in commands}
    per_cpu = {k: tokens[k] / cpu[k] for k in commands}
    print(f"\ncorpus {corpus.name}: {pre} tokens; {a.workers} workers; medians of {a.runs}")
    for name in commands:
        print(
            f"  {name:13s} {med[name]:7.2f} s {rate[name]:>11,.0f} tokens/s | "
            f"{cpu[name]:7.2f} CPU s {per_cpu[name]:>11,.0f} tokens/CPU s | "
            f"peak RSS {rss[name] / 2**20:5.0f} MiB | wall {[round(w, 1) for w in walls[name]]}"
        )
    paired = statistics.median(
        p / o for p, o in zip(walls["megatron"], walls["llmbuild"], strict=True)
    )
    print(
        f"  ratio llmbuild / megatron: {rate['llmbuild'] / rate['megatron']:.2f}x tokens/s "
        f"(of the medians; {paired:.2f}x median of the rounds' ratios), "
        f"{per_cpu['llmbuild'] / per_cpu['megatron']:.2f}x tokens per CPU second"
    )
    print(f"  outputs byte-identical (.bin and .idx): {'yes' if same else 'NO'}")
    for name, engine in engines.items():
        print(f"  {name} encoded with {engine}")
    print(
        f"  sft ({sft.name}, {sft_tokens['tokens']} tokens) / pretrain: "
        f"{rate['llmbuild sft'] / rate['llmbuild']:.2f} in tokens/s, "
        f"{per_cpu['llmbuild sft'] / per_cpu['llmbuild']:.2f} in tokens per CPU second"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
