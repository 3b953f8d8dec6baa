"""The transformers load check of a converted HF directory, and the worker process that runs it.

``verify_hf_dir`` loads a directory with transformers: config, tokenizer and the model (every
weight loaded, none missing, unexpected or mismatched), or, with ``weights=False``, the model
built on the meta device against the safetensors headers.

Importing torch and transformers takes seconds; the conversion itself is mostly the kernel
copying pages. So mg2hf starts ``VerifyWorker`` first: a second process (``python -m
llmbuild.convert.verify``) imports on the other core while the parent converts, then waits on
stdin for one request (a JSON line ``{"dir": ..., "weights": bool}``), runs ``verify_hf_dir``
and answers one JSON line ``{"ok": true}`` or ``{"ok": false, "error": "..."}``. End of input
without a request: it exits. If the worker dies or answers nonsense, the check runs in the
parent instead, so a broken worker can cost time but never skip the check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError


def verify_hf_dir(out_dir: Path, *, weights: bool = True) -> None:
    """Load ``out_dir`` with transformers: config, tokenizer, and the model (every weight
    loaded, none missing, unexpected or mismatched). ``weights=False`` builds the model on the
    meta device and checks names and shapes against the safetensors headers instead."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmbuild.convert.formats.safetensors_io import LazyHFWeights

    try:
        AutoTokenizer.from_pretrained(str(out_dir))
        if weights:
            _, info = AutoModelForCausalLM.from_pretrained(
                str(out_dir), output_loading_info=True, dtype="auto"
            )
        else:
            import torch
            from safetensors import safe_open

            cfg = AutoConfig.from_pretrained(str(out_dir))
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(cfg)
            # names and shapes as the safetensors library itself reads the files (the loader
            # transformers uses), not as our own reader does
            stored: dict[str, tuple[int, ...]] = {}
            for path in sorted(set(LazyHFWeights(out_dir).file_of.values())):
                with safe_open(str(path), framework="pt") as f:
                    for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                        stored[k] = tuple(f.get_slice(k).get_shape())
            want = {
                k: tuple(v.shape)
                for k, v in model.state_dict().items()
                if not (k == "lm_head.weight" and cfg.tie_word_embeddings)
            }
            info = {
                "missing_keys": sorted(set(want) - set(stored)),
                "unexpected_keys": sorted(set(stored) - set(want)),
                "mismatched_keys": sorted(
                    k for k in set(want) & set(stored) if stored[k] != want[k]
                ),
            }
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure means the dir is not usable
        raise UserError(
            f"transformers cannot load the converted directory: {exc}", path=out_dir
        ) from exc
    bad = {
        k: v
        for k, v in info.items()
        if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if bad:
        raise UserError(f"transformers loaded it with problems: {bad}", path=out_dir)


class VerifyWorker:
    def __init__(self) -> None:
        src = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
        self.proc: subprocess.Popen[str] | None = subprocess.Popen(
            [sys.executable, "-m", "llmbuild.convert.verify"],
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
