"""SmoothQuant + int8/int4 quantization with llm-compressor's oneshot, saved compressed.

Heavy imports (torch, transformers, llmcompressor) happen here; import this module only
from a CLI handler or a test that runs in the quantize environment.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmbuild import hfdir
from llmbuild.atomic import atomic_dir, atomic_file
from llmbuild.errors import UserError
from llmbuild.quantize import calib as calib_mod
from llmbuild.quantize import scales as scales_mod
from llmbuild.quantize.spec import REQUIRED_OUTPUT, QuantSpec, check_model_dir


@dataclass
class QuantResult:
    samples: int = 0
    tokens: int = 0
    smoothed_layers: int = 0
    scales_from: str = "none"  # "computed", a scale file path, or "none"
    modifiers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(vars(self))


def _recording_smoothquant_cls():
    """SmoothQuantModifier that also keeps the scales it folds into the model."""
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
    from llmcompressor.modifiers.transform.smoothquant.base import MINIMUM_SMOOTHING_SCALE
    from pydantic import Field

    class RecordingSmoothQuantModifier(SmoothQuantModifier):
        recorded_: list | None = Field(default=None, repr=False)

        def _calculate_smoothing_scales(self, balance_layers, activation_scales):
            import torch

            scales = super()._calculate_smoothing_scales(balance_layers, activation_scales)
            applied = torch.maximum(
                scales, torch.tensor([MINIMUM_SMOOTHING_SCALE], device=scales.device)
            )
            for m in self.resolved_mappings_ or []:
                if m.balance_layers is balance_layers:
                    if self.recorded_ is None:
                        self.recorded_ = []
                    self.recorded_.append(
                        (
                            m.smooth_name,
                            applied.detach().float().cpu().clone(),
                            list(balance_layers),
                        )
                    )
                    break
            return scales

    return RecordingSmoothQuantModifier


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


def _fix_recipe_name(out: Path) -> None:
    """recipe.yaml names our recording subclass; name the llm-compressor modifier it runs."""
    recipe = out / "recipe.yaml"
    if recipe.is_file():
        text = recipe.read_text()
        recipe.write_text(text.replace("RecordingSmoothQuantModifier:", "SmoothQuantModifier:"))


def check_output(out: Path) -> None:
    missing = [n for n in REQUIRED_OUTPUT if not (out / n).is_file()]
    if not any(out.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise RuntimeError(f"quantized model directory incomplete: missing {missing}")
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg.get("quantization_config") or {}
    if qc.get("quant_method") != "compressed-tensors":
        raise RuntimeError("config.json has no compressed-tensors quantization_config")


def run(
    spec: QuantSpec,
    *,
    record: Callable[[Path, dict[str, object]], None] | None = None,
) -> QuantResult:
    """Quantize ``spec.model`` into ``spec.output`` (and the scales into ``spec.scale_output``).

    ``record(path, extra)`` is called on each artifact just before it is final (the temporary
    output directory before its rename; the scale file after its rename), so the caller can
    write provenance.
    """
    check_model_dir(spec.model)
    records = None
    if spec.calib is not None:
        records = calib_mod.select(calib_mod.read_records(spec.calib), spec.num_samples, spec.seed)
    loaded_scales = None
    if spec.scale_input is not None:
        loaded_scales = scales_mod.load(spec.scale_input)
        if abs(loaded_scales.strength - float(spec.smoothing_strength or 0)) > 1e-9:
            raise UserError(
                f"made with smoothing strength {loaded_scales.strength}, but "
                f"--smoothing-strength is {spec.smoothing_strength}; pass "
                f"--smoothing-strength {loaded_scales.strength} or recompute the scales",
                path=spec.scale_input,
                field="smoothing_strength",
            )

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(spec.model)
    model = AutoModelForCausalLM.from_pretrained(spec.model, dtype="auto")
    model.eval()

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier

    result = QuantResult()
    dataset = None
    if spec.needs_calibration:
        if records is None:  # guarded by QuantSpec; kept for type checkers
            raise UserError("a calibration file is required", field="--calib")
        if any(r.is_chat for r in records) and not tokenizer.chat_template:
            raise UserError(
                "Alpaca records need the tokenizer's chat_template",
                path=spec.model / "tokenizer_config.json",
                field="chat_template",
            )
        ids = tokenize_records(tokenizer, records, spec.seq_length)
        if not ids:
            raise UserError("no calibration record has any token", path=spec.calib)
        dataset = Dataset.from_dict(
            {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}
        )
        result.samples = len(ids)
        result.tokens = sum(len(x) for x in ids)

    recipe: list = []
    sq = None
    if loaded_scales is not None:
        scales_mod.check_against(model, loaded_scales, spec.scale_input)
        scales_mod.apply(model, loaded_scales)
        result.smoothed_layers = len(loaded_scales.scales)
        result.scales_from = str(spec.scale_input)
    elif spec.smoothing_strength is not None:
        sq = _recording_smoothquant_cls()(smoothing_strength=spec.smoothing_strength)
        recipe.append(sq)
        result.scales_from = "computed"
    qkw = {"targets": ["Linear"], "scheme": spec.preset, "ignore": ["lm_head"]}
    if spec.algorithm == "gptq":
        recipe.append(GPTQModifier(dampening_frac=spec.dampening_frac, **qkw))
    else:
        recipe.append(QuantizationModifier(**qkw))
    result.modifiers = [type(m).__name__.removeprefix("Recording") for m in recipe]

    kwargs: dict[str, object] = {"shuffle_calibration_samples": False}
    if dataset is not None:
        kwargs.update(
            dataset=dataset,
            num_calibration_samples=len(dataset),
            max_seq_length=spec.seq_length,
        )
    oneshot(model=model, recipe=recipe, **kwargs)

    computed = None
    if sq is not None:
        names = {id(m): n for n, m in model.named_modules()}
        recorded = sq.recorded_ or []
        computed = scales_mod.SmoothingScales(
            strength=float(spec.smoothing_strength),
            scales={n: s for n, s, _ in recorded},
            balance={n: [names[id(b)] for b in bl] for n, _, bl in recorded},
            extra={
                "architecture": type(model).__name__,
                "samples": str(result.samples),
                "tokens": str(result.tokens),
                "seed": str(spec.seed),
            },
        )
        result.smoothed_layers = len(computed.scales)
        if not computed.scales:
            raise RuntimeError("SmoothQuant smoothed no layer: no mapping matched the model")

    sc_out = computed or loaded_scales
    if spec.scale_output is not None and sc_out is not None:
        with atomic_file(spec.scale_output, "wb") as fh:
            fh.write(sc_out.to_bytes())
        if record:
            record(Path(spec.scale_output), {"smoothing": result.as_dict()})

    with atomic_dir(spec.output) as tmp:
        model.save_pretrained(tmp, save_compressed=True)
        _fix_recipe_name(tmp)
        _complete_tokenizer_files(spec.model, tmp, tokenizer)
        check_output(tmp)
        if record:
            record(
                tmp,
                {
                    "quantization": {
                        "scheme": spec.scheme,
                        "algorithm": spec.algorithm,
                        **result.as_dict(),
                    }
                },
            )
    return result
