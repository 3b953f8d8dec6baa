"""The transformers load check of mg2hf, in a second process started before the conversion.

Importing torch and transformers takes seconds; the conversion itself is mostly the kernel
copying pages. So mg2hf starts this worker first: it imports on the other core while the
parent converts, then waits on stdin for one request (a JSON line ``{"dir": ..., "weights":
bool}``), runs ``checkpointer.verify_hf_dir`` and answers one JSON line ``{"ok": true}`` or
``{"ok": false, "error": "..."}``. End of input without a request: it exits.

``VerifyWorker`` is the parent's side; if the worker dies or answers nonsense, the check runs
in the parent instead, so a broken worker can cost time but never skip the check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError


class VerifyWorker:
    def __init__(self) -> None:
        src = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
        self.proc: subprocess.Popen[str] | None = subprocess.Popen(
            [sys.executable, "-m", "llmbuild.convert.verify_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def check(self, out_dir: Path, *, weights: bool) -> None:
        """Raise UserError if transformers cannot load ``out_dir`` (as ``verify_hf_dir``)."""
        proc, answer = self.proc, None
        if proc is not None and proc.stdin is not None and proc.stdout is not None:
            try:
                proc.stdin.write(json.dumps({"dir": str(out_dir), "weights": weights}) + "\n")
                proc.stdin.close()
                answer = json.loads(proc.stdout.readline() or "null")
            except (OSError, ValueError):
                answer = None
            proc.wait()
            self.proc = None
        if isinstance(answer, dict) and answer.get("ok") is True:
            return
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            raise UserError(answer["error"])  # names the directory already
        from llmbuild.convert.checkpointer import verify_hf_dir

        verify_hf_dir(out_dir, weights=weights)  # the worker failed: check here

    def close(self) -> None:
        """Stop the worker if it was not used (an error before the check)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> VerifyWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def main() -> int:
    from llmbuild.mcore.device import quiet_warnings

    quiet_warnings()
    import transformers  # noqa: F401 - the slow import, done while the parent converts
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from llmbuild.convert.checkpointer import verify_hf_dir

    quiet_warnings()
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    req = json.loads(line)
    try:
        verify_hf_dir(Path(req["dir"]), weights=bool(req["weights"]))
        answer: dict[str, Any] = {"ok": True}
    except UserError as exc:
        answer = {"ok": False, "error": str(exc)}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
