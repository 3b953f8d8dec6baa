"""Quantize a Hugging Face model with llm-compressor's oneshot, saved as compressed-tensors.

One recipe per scheme (llmbuild.quantize.schemes); the SmoothQuant scales of w8a8 come from
their own file (or are computed here and can be written to one). Heavy imports (torch,
transformers, llmcompressor) happen inside the functions; import this module only from a
CLI handler or a test that runs in the quantize environment.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmbuild import hfdir
from llmbuild.atomic import atomic_dir, atomic_file
from llmbuild.errors import UserError
from llmbuild.quantize import calib as calib_mod
from llmbuild.quantize import scales as scales_mod
from llmbuild.quantize import smoothquant
from llmbuild.quantize.schemes import Scheme
from llmbuild.quantize.spec import REQUIRED_OUTPUT, QuantSpec, ScalesSpec, check_model_dir

Record = Callable[[Path, dict[str, object]], None]
#: a scheme's KV cache -> compressed-tensors' quantization type
KV_TYPES = {"fp8": "float", "int8": "int"}


@dataclass
class QuantResult:
    scheme: str = ""
    samples: int = 0
    tokens: int = 0
    smoothed_layers: int = 0
    scales_from: str = "none"  # "computed", a scale file path, or "none"
    modifiers: list[str] = field(default_factory=list)
    weights_bytes: int = 0

    def as_dict(self) -> dict[str, object]:
        return dict(vars(self))


def tokenize_records(tokenizer, records: list[calib_mod.Record], seq_length: int):
    """Token ids per record: chat records through the tokenizer's chat template."""
    out: list[list[int]] = []
    for r in records:
        if r.is_chat:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": r.prompt}, {"role": "assistant", "content": r.answer}],
                tokenize=False,
            )
            ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=seq_length)[
                "input_ids"
            ]
        else:
            ids = tokenizer(r.text, truncation=True, max_length=seq_length)["input_ids"]
        if ids:
            out.append(list(ids))
    return out


def _load(model_dir: Path, seed: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    model.eval()
    return tokenizer, model


def _dataset(tokenizer, model_dir: Path, calib: Path, num_samples: int, seq_length: int, seed):
    """(tokenized datasets.Dataset, samples, tokens) of a seeded sample of the calibration file."""
    from datasets import Dataset

    records = calib_mod.select(calib_mod.read_records(calib), num_samples, seed)
    if any(r.is_chat for r in records) and not tokenizer.chat_template:
        raise UserError(
            "Alpaca records need the tokenizer's chat_template",
            path=Path(model_dir) / "tokenizer_config.json",
            field="chat_template",
        )
    ids = tokenize_records(tokenizer, records, seq_length)
    if not ids:
        raise UserError("no calibration record has any token", path=calib, field="--calib")
    ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
    return ds, len(ids), sum(len(x) for x in ids)


def _complete_tokenizer_files(src: Path, dst: Path, tokenizer) -> None:
    # copied verbatim (when present) so the output is served exactly like the input: tokenizer,
    # chat template, generation defaults
    for name in hfdir.COMPANION_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    tcfg_path = dst / "tokenizer_config.json"
    tcfg = json.loads(tcfg_path.read_text())
    if not tcfg.get("chat_template") and (dst / "chat_template.jinja").is_file():
        tcfg["chat_template"] = (dst / "chat_template.jinja").read_text()
        tcfg_path.write_text(json.dumps(tcfg, indent=2, ensure_ascii=False) + "\n")
    if not (dst / "special_tokens_map.json").is_file():
        stm = {k: v for k, v in tokenizer.special_tokens_map.items() if v is not None}
        (dst / "special_tokens_map.json").write_text(json.dumps(stm, indent=2) + "\n")


def check_output(out: Path, scheme: Scheme) -> None:
    missing = [n for n in REQUIRED_OUTPUT if not (out / n).is_file()]
    if not any(out.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise RuntimeError(f"quantized model directory incomplete: missing {missing}")
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg.get("quantization_config") or {}
    if qc.get("quant_method") != "compressed-tensors":
        raise RuntimeError("config.json has no compressed-tensors quantization_config")
    if scheme.kv_cache and not qc.get("kv_cache_scheme"):
        raise RuntimeError(f"{scheme.name}: config.json has no kv_cache_scheme")
    if scheme.preset and not qc.get("config_groups"):
        raise RuntimeError(f"{scheme.name}: config.json has no quantized weight group")


def recipe(scheme: Scheme, dampening_frac: float) -> list:
    """llm-compressor modifiers for ``scheme`` (smoothing, if any, is folded in before)."""
    mods: list = []
    if scheme.preset is not None:
        from llmcompressor.modifiers.gptq import GPTQModifier
        from llmcompressor.modifiers.quantization import QuantizationModifier

        qkw = {"targets": ["Linear"], "scheme": scheme.preset, "ignore": ["lm_head"]}
        if scheme.algorithm == "gptq":
            mods.append(GPTQModifier(dampening_frac=dampening_frac, **qkw))
        elif scheme.algorithm == "awq":
            from llmcompressor.modifiers.transform.awq import AWQModifier

            mods += [AWQModifier(duo_scaling=True), QuantizationModifier(**qkw)]
        else:
            mods.append(QuantizationModifier(**qkw))
    if scheme.kv_cache is not None:
        from compressed_tensors.quantization import QuantizationArgs
        from llmcompressor.modifiers.quantization import QuantizationModifier

        kv = QuantizationArgs(
            num_bits=8, type=KV_TYPES[scheme.kv_cache], strategy="tensor", dynamic=False
        )
        mods.append(QuantizationModifier(kv_cache_scheme=kv))
    return mods


@contextlib.contextmanager
def _no_pinning_without_accelerator() -> Iterator[None]:
    """llm-compressor 0.14.0.1's AWQ pins its cached activations before each grid search, for
    faster host-to-device copies (transform/awq/base.py ``_apply_smoothing`` ->
    ``IntermediatesCache.pin_memory``); torch refuses to pin memory on a machine without an
    accelerator ("Cannot access accelerator device when none is available"). Pinning only
    speeds copies to an accelerator, so without one it is skipped; the arithmetic is the same.
    """
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original  # type: ignore[method-assign]


def _modifier_name(m) -> str:
    return type(m).__name__.removeprefix("Recording")


def _weights_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob("*.safetensors"))


def _write_scales(sc, path: Path, record: Record | None, extra: dict[str, object]) -> None:
    with atomic_file(path, "wb") as fh:
        fh.write(sc.to_bytes())
    if record:
        record(Path(path), extra)


def make_scales(spec: ScalesSpec, *, record: Record | None = None) -> tuple[int, int, int]:
    """Compute ``spec.model``'s SmoothQuant scales into ``spec.output``:
    (samples, tokens, smoothed layers)."""
    check_model_dir(spec.model)
    tokenizer, model = _load(spec.model, spec.seed)
    ds, samples, tokens = _dataset(
        tokenizer, spec.model, spec.calib, spec.num_samples, spec.seq_length, spec.seed
    )
    sc = smoothquant.compute(
        model,
        ds,
        strength=spec.smoothing_strength,
        seq_length=spec.seq_length,
        extra={"samples": str(samples), "tokens": str(tokens), "seed": str(spec.seed)},
    )
    info = {"samples": samples, "tokens": tokens, "smoothed_layers": len(sc.scales)}
    _write_scales(sc, spec.output, record, {"smoothing": info})
    return samples, tokens, len(sc.scales)


def run(spec: QuantSpec, *, record: Record | None = None) -> QuantResult:
    """Quantize ``spec.model`` into ``spec.output`` (and computed scales into
    ``spec.scale_output``).

    ``record(path, extra)`` is called on each artifact just before it is final (the temporary
    output directory before its rename; the scale file after its rename), so the caller can
    write provenance.
    """
    check_model_dir(spec.model)
    scheme = spec.spec
    loaded = None
    if spec.scale_input is not None:
        loaded = scales_mod.load(spec.scale_input)
        if spec.smoothing_strength is not None and (
            abs(loaded.strength - spec.smoothing_strength) > 1e-9
        ):
            raise UserError(
                f"made with smoothing strength {loaded.strength}, but "
                f"--smoothing-strength is {spec.smoothing_strength}; pass "
                f"--smoothing-strength {loaded.strength} or recompute the scales",
                path=spec.scale_input,
                field="smoothing_strength",
            )
    if spec.calib is not None:  # read (and its errors reported) before the model loads
        calib_mod.read_records(spec.calib)

    result = QuantResult(scheme=scheme.name)
    tokenizer, model = _load(spec.model, spec.seed)
    dataset = None
    if spec.needs_calibration:
        assert spec.calib is not None  # QuantSpec refuses a missing file
        dataset, result.samples, result.tokens = _dataset(
            tokenizer, spec.model, spec.calib, spec.num_samples, spec.seq_length, spec.seed
        )
    if spec.computes_scales:
        # computed on the float model, then applied to a fresh copy with the same arithmetic
        # as a file, so computing here and reusing a file give the same bytes
        assert spec.smoothing_strength is not None and dataset is not None
        loaded = smoothquant.compute(
            model,
            dataset,
            strength=spec.smoothing_strength,
            seq_length=spec.seq_length,
            extra={
                "samples": str(result.samples),
                "tokens": str(result.tokens),
                "seed": str(spec.seed),
            },
        )
        result.scales_from = "computed"
        result.modifiers.append("SmoothQuantModifier")
        _, model = _load(spec.model, spec.seed)
        if spec.scale_output is not None:
            info = {"samples": result.samples, "tokens": result.tokens}
            _write_scales(loaded, spec.scale_output, record, {"smoothing": info})
    if loaded is not None:
        where = spec.scale_input or spec.scale_output or "computed scales"
        scales_mod.check_against(model, loaded, where)
        scales_mod.apply(model, loaded)
        result.smoothed_layers = len(loaded.scales)
        if spec.scale_input is not None:
            result.scales_from = str(spec.scale_input)

    from llmcompressor import oneshot

    mods = recipe(scheme, spec.dampening_frac)
    result.modifiers += [_modifier_name(m) for m in mods]
    kwargs: dict[str, object] = {"shuffle_calibration_samples": False}
    if scheme.calibrates:
        assert dataset is not None
        kwargs.update(
            dataset=dataset, num_calibration_samples=len(dataset), max_seq_length=spec.seq_length
        )
    guard = _no_pinning_without_accelerator if scheme.algorithm == "awq" else contextlib.nullcontext
    with guard():
        oneshot(model=model, recipe=mods, **kwargs)

    with atomic_dir(spec.output) as tmp:
        model.save_pretrained(tmp, save_compressed=True)
        _complete_tokenizer_files(spec.model, tmp, tokenizer)
        check_output(tmp, scheme)
        result.weights_bytes = _weights_bytes(tmp)
        if record:
            record(tmp, {"quantization": {**result.as_dict(), "algorithm": scheme.algorithm}})
    return result
