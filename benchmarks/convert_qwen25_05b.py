"""Conversion cost at a real size: a random checkpoint with Qwen2.5-0.5B's shape (hidden 896,
24 layers, 14 heads, 2 kv heads, intermediate 4864, vocab 151936, tied embeddings, qkv bias;
bf16, about 1 GB), converted hf2mg at TP=2/PP=2 and back with the `llmbuild convert` CLI, each
direction a child process. Prints the wall time and the peak resident memory of each direction
beside the time of a plain copy of the same bytes, with the targets (peak RSS <= 1.5x the
checkpoint size, wall <= 3x the plain copy); medians over ``--runs``.

"Cold-ish": before every timed step (copy or conversion) the input files are dropped from the
page cache with posix_fadvise(DONTNEED), so the copy and the conversions both read from disk
(where the virtual disk is cached by the host, "disk" is memory speed, and so is the copy).

Also printed, measured in the same run: the floor of each direction, what a Python process
pays before converting a byte (interpreter + ``import numpy`` for hf2mg, which needs no torch;
interpreter + ``import torch, transformers`` for mg2hf's load check, which runs in a second
process beside the conversion); it does not grow with the model, the copy does.
``--shape 1.5b`` (Qwen2.5-1.5B's shape, about 3.1 GB) shows how the ratio moves with size.

    .envs/train/bin/python benchmarks/convert_qwen25_05b.py [--runs 3] [--workdir DIR]
        [--shape 0.5b|1.5b] [--backend numpy|torch]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "dtype": "bfloat16",
}
SHAPES = {
    "0.5b": QWEN25_05B,
    # Qwen2.5-1.5B: same family, 3x the bytes
    "1.5b": QWEN25_05B
    | {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
    },
}


def make_checkpoint(out: Path, config: dict) -> int:
    """config, a small tokenizer and random bf16 weights written tensor by tensor; bytes."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    from llmbuild.convert import registry as R
    from llmbuild.convert.formats import safetensors_io as S
    from llmbuild.mcore import description as M

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    vocab = {"<unk>": 0, "<|endoftext|>": 1, "<|im_start|>": 2, "<|im_end|>": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                "{{ m['content'] }}<|im_end|>\n{% endfor %}",
            }
        )
    )
    spec = R.find_arch(config)
    args = M.describe(config, spec.name, qkv_bias=spec.qkv_bias)
    specs = [
        S.TensorSpec(k, "bfloat16", spec.hf_shape(k, args))
        for _, keys in R.key_table(spec, args).values()
        for k in keys
    ]
    gen = torch.Generator().manual_seed(0)

    def tensors():
        for s in specs:
            yield (torch.randn(s.shape, generator=gen) * 0.02).to(torch.bfloat16)

    S.write_sharded(out, specs, tensors(), max_shard_bytes=5 * 1024**3)
    return sum(s.nbytes for s in specs)


def drop_cache(path: Path) -> None:
    """Evict a file's (or a directory's files') pages from the page cache."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_measured(cmd: list[str]) -> tuple[float, int, int]:
    """(wall s, ru_maxrss bytes of the child, peak summed RSS of its process tree by sampling)."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    stderr = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss * 1024, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", help="default: a temporary directory, removed at the end")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--pp", type=int, default=2)
    ap.add_argument("--verify", default="weights", choices=("weights", "meta", "none"))
    ap.add_argument("--backend", default="numpy", choices=("numpy", "torch"), help="hf2mg's")
    ap.add_argument("--shape", default="0.5b", choices=sorted(SHAPES))
    ap.add_argument("--make", metavar="DIR", help=argparse.SUPPRESS)  # internal: child process
    a = ap.parse_args()
    if a.make:
        make_checkpoint(Path(a.make), SHAPES[a.shape])
        return 0

    work = Path(a.workdir or tempfile.mkdtemp(prefix="convert-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    hf = work / f"hf-{a.shape}"
    t0 = time.perf_counter()
    if not (hf / "model.safetensors").is_file():
        # A child process: this one stays small, and a child's ru_maxrss starts from its
        # parent's peak at fork (Linux keeps the high-water mark across exec).
        subprocess.run(
            [sys.executable, __file__, "--make", str(hf), "--shape", a.shape], check=True
        )
    size = (hf / "model.safetensors").stat().st_size
    print(
        f"checkpoint: {size / 1e9:.3f} GB bf16 Qwen2.5-{a.shape.upper()} shape at {hf} "
        f"(made in {time.perf_counter() - t0:.1f}s); tp={a.tp} pp={a.pp}, {a.runs} run(s), "
        f"hf2mg backend {a.backend}",
        flush=True,
    )
    llmbuild = [sys.executable, "-m", "llmbuild", "convert"]
    rows: dict[str, list[tuple[float, int, int]]] = {"copy": [], "hf2mg": [], "mg2hf": []}
    floors: dict[str, list[float]] = {"hf2mg": [], "mg2hf": []}
    floor_cmd = {
        "hf2mg": [sys.executable, "-c", "import numpy"],
        "mg2hf": [sys.executable, "-c", "import torch, transformers; transformers.AutoModel"],
    }
    inner: dict[str, list[float]] = {"hf2mg": [], "mg2hf": []}
    checks: list[float] = []  # mg2hf: after converting, until the load check answered
    for i in range(a.runs):
        for d in ("copy.safetensors", "mg", "back"):
            p = work / d
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        drop_cache(hf)
        t = time.perf_counter()
        shutil.copyfile(hf / "model.safetensors", work / "copy.safetensors")
        rows["copy"].append((time.perf_counter() - t, 0, 0))
        (work / "copy.safetensors").unlink()

        drop_cache(hf)
        rows["hf2mg"].append(
            run_measured(
                [
                    *llmbuild,
                    "hf2mg",
                    "--input",
                    str(hf),
                    "--output",
                    str(work / "mg"),
                    "--tp",
                    str(a.tp),
                    "--pp",
                    str(a.pp),
                    "--dtype",
                    "bfloat16",
                    "--backend",
                    a.backend,
                ]
            )
        )
        drop_cache(work / "mg")
        drop_cache(hf)
        rows["mg2hf"].append(
            run_measured(
                [
                    *llmbuild,
                    "mg2hf",
                    "--input",
                    str(work / "mg"),
                    "--hf-source",
                    str(hf),
                    "--output",
                    str(work / "back"),
                    "--verify",
                    a.verify,
                ]
            )
        )
        for k, d in (("hf2mg", "mg"), ("mg2hf", "back")):
            prov = json.loads((work / d / "provenance.json").read_text())
            inner[k].append(float(prov["conversion"]["seconds"]))
            if k == "mg2hf":
                checks.append(float(prov["conversion"].get("verify_seconds", 0.0)))
            floors[k].append(run_measured(floor_cmd[k])[0])
        print(
            f"run {i + 1}: copy {rows['copy'][-1][0]:.2f}s, "
            + ", ".join(
                f"{k} {rows[k][-1][0]:.2f}s / {rows[k][-1][1] / 1e9:.2f} GB"
                for k in ("hf2mg", "mg2hf")
            ),
            flush=True,
        )
    copy = statistics.median(r[0] for r in rows["copy"])
    print(f"\nplain copy of {size / 1e9:.3f} GB: {copy:.2f}s (median)")
    print(
        f"{'direction':<8} {'wall s':>7} {'x copy':>7} {'peak RSS GB':>12} {'x ckpt':>7} "
        f"{'tree GB':>8}  targets: RSS <= 1.5x, wall <= 3x   {'convert s':>9} {'x copy':>7}"
        f" {'floor s':>8} {'wall-floor':>10} {'x copy':>7}"
    )
    ok = True
    for k in ("hf2mg", "mg2hf"):
        wall = statistics.median(r[0] for r in rows[k])
        rss = statistics.median(r[1] for r in rows[k])
        tree = statistics.median(r[2] for r in rows[k])
        rw, rr = wall / copy, max(rss, tree) / size
        met = rw <= 3.0 and rr <= 1.5
        ok &= met
        conv = statistics.median(inner[k])
        floor = statistics.median(floors[k])
        print(
            f"{k:<8} {wall:>7.2f} {rw:>7.2f} {rss / 1e9:>12.2f} {rr:>7.2f} {tree / 1e9:>8.2f}  "
            f"{'met' if met else 'MISSED':<34} {conv:>9.2f} {conv / copy:>7.2f}"
            f" {floor:>8.2f} {wall - floor:>10.2f} {(wall - floor) / copy:>7.2f}"
        )
    print(
        f"mg2hf: after converting, {statistics.median(checks):.2f}s (median) went to waiting "
        f"for the load-check worker's imports and its check (--verify {a.verify})"
    )
    print(
        "wall: the whole CLI process (interpreter, imports, checks, conversion, transformers "
        "load check, provenance digests); convert s: reading, converting and writing alone; "
        "floor: a process that only imports what the direction needs (numpy; torch + "
        "transformers for the load check), the cost before the first byte, whatever the "
        "model's size"
    )
    if not a.workdir:
        shutil.rmtree(work)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
