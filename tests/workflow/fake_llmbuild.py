"""A stand-in for `llmbuild` that makes each declared output instantly.

The workflow tests run the real Snakefile with this on the rules' command path, so they test
the graph itself (what reruns after which change) in seconds, without the stacks.
"""

import json
import signal
import sys
import time
from pathlib import Path

FILE_SUFFIXES = {".json", ".jsonl", ".csv", ".png", ".txt", ".html", ".safetensors"}


def make(flag: str, value: str) -> None:
    p = Path(value)
    if flag == "--output" and p.suffix not in FILE_SUFFIXES:
        p.mkdir(parents=True, exist_ok=True)
        (p / "content.txt").write_text(" ".join(sys.argv[1:]))
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".json" and "/gates/" in value:
        p.write_text(json.dumps({"gate": "fake", "subject": p.stem, "status": "pass"}))
    elif p.suffix == ".json":
        p.write_text(json.dumps({"accuracy": 1.0, "n": 1, "correct": 1, "state": "ready"}))
    else:
        p.write_text(" ".join(sys.argv[1:]) + "\n")


INPUT_FLAGS = (
    "--input",
    "--data",
    "--tokenizer",
    "--calib",
    "--hf-source",
    "--reference",
    "--hf",
    "--scale-input",
)
OUTPUT_FLAGS = (
    "--output",
    "--train-log",
    "--records",
    "--verdict",
    "--html",
    "--compare",
    "--table",
)


def record(args: list[str], started: float) -> None:
    """Provenance records as the real commands write them (llmbuild's own parser and writer),
    so the audit and `why` read a fake build like a real one."""
    try:
        from llmbuild import provenance
        from llmbuild.cli import build_parser
    except ImportError:
        return
    parsed = vars(build_parser(args[0]).parse_args(args))
    serve = args[:2] == ["serve", "run"]
    ins = INPUT_FLAGS + (() if serve else ("--endpoint",))
    outs = OUTPUT_FLAGS + (("--endpoint",) if serve else ())
    inputs = []
    for i, a in enumerate(args[:-1]):
        if a in ins:
            j = i + 1
            while j < len(args) and not args[j].startswith("--"):
                inputs.append(args[j])
                j += 1
    for i, a in enumerate(args[:-1]):
        if a in outs and Path(args[i + 1]).exists():
            provenance.write(
                args[i + 1], command=" ".join(args[:2]), args=parsed, inputs=inputs, started=started
            )


def main() -> None:
    started = time.time()
    args = sys.argv[1:]
    for i, a in enumerate(args[:-1]):
        if a in (
            "--output",
            "--train-log",
            "--records",
            "--endpoint",
            "--marker",
            "--verdict",
            "--html",
            "--compare",
            "--table",
        ):
            make(a, args[i + 1])
    if args[0] not in ("envs",):
        record(args, started)
    if args[:2] == ["serve", "run"]:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(1)


if __name__ == "__main__":
    main()
