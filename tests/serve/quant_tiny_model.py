"""Quantized tiny Llamas in compressed-tensors format, made locally, for serve tests.

    quant_tiny_model.py OUT_DIR [w8a8] [w4a16] [fp8]

Runs in the quantize environment (.envs/quantize: llm-compressor, transformers, torch). The
base model is tests/serve/serve_tiny_model.py's (float32, hidden 128, 4 layers); W8A8 goes
through `llmbuild quantize smoothquant` as the graph runs it (int8 per-channel weights, int8
per-token dynamic activations); W4A16 is llm-compressor's preset with round-to-nearest;
FP8 is the FP8_DYNAMIC preset (needs no calibration). Prints one JSON line:
{"base": DIR, "w8a8": DIR, ...}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve_tiny_model import CORPUS, make_tiny_llama  # noqa: E402

KINDS = ("w8a8", "w4a16", "fp8")


def _calib(out: Path) -> Path:
    path = out / "calib.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS[:16]))
    return path


def w8a8(base: Path, out: Path) -> Path:
    from llmbuild.cli import main

    dest = out / "w8a8"
    argv = ["quantize", "smoothquant", "--input", str(base), "--output", str(dest)]
    argv += ["--calib", str(_calib(out)), "--scheme", "W8A8", "--num-samples", "8"]
    argv += ["--seq-length", "32", "--seed", "0"]
    rc = main(argv)
    if rc:
        raise SystemExit(f"llmbuild quantize smoothquant failed with {rc}")
    return dest


def _oneshot_preset(base: Path, dest: Path, preset: str) -> Path:
    import shutil

    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    recipe = QuantizationModifier(targets="Linear", scheme=preset, ignore=["lm_head"])
    oneshot(model=model, recipe=recipe)
    model.save_pretrained(dest, save_compressed=True)
    for f in base.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation")):
            shutil.copy(f, dest / f.name)
    return dest


def main(argv: list[str]) -> int:
    out = Path(argv[0]).resolve()
    kinds = argv[1:] or list(KINDS)
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base"
    if not (base / "config.json").is_file():
        make_tiny_llama(base)
    made: dict[str, str] = {"base": str(base)}
    for kind in kinds:
        if kind == "w8a8":
            made[kind] = str(w8a8(base, out))
        elif kind == "w4a16":
            made[kind] = str(_oneshot_preset(base, out / "w4a16", "W4A16"))
        elif kind == "fp8":
            made[kind] = str(_oneshot_preset(base, out / "fp8", "FP8_DYNAMIC"))
        else:
            raise SystemExit(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    print(json.dumps(made))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
