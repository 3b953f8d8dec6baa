"""What a model directory's config.json says about serving it: its quantization and dtype.

``model_quantization`` reads ``quantization_config`` (llm-compressor's compressed-tensors,
vLLM's fp8, AWQ/GPTQ) into what the dtype rules need; ``model_dtype`` the model's own dtype.
Standard library only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llmbuild.errors import UserError

_DTYPE_ALIASES = {
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
}


@dataclass(frozen=True)
class Quantization:
    """What config.json's quantization_config says, as far as the dtype rules need it.

    ``kind``: "int8-w8a8" (int8 weights and int8 activations), "fp8" (8-bit float weights),
    "weight-only" (int weights, activations unquantized: W4A16, W8A16, AWQ, GPTQ) or "other".
    """

    kind: str
    method: str
    weight_bits: int | None = None
    weight_strategy: str | None = None
    input_symmetric: bool | None = None
    input_dynamic: bool | None = None
    format: str | None = None
    kv_cache: str | None = None

    def describe(self) -> str:
        bits = f" int{self.weight_bits}" if self.kind == "weight-only" and self.weight_bits else ""
        return f"{self.kind}{bits} ({self.method})"


def read_config(model: str | os.PathLike[str] | Mapping[str, object]) -> tuple[dict, str]:
    """(config.json as a dict, a label naming it in messages)."""
    if isinstance(model, Mapping):
        return dict(model), "model config"
    path = Path(model)
    cfg_path = path / "config.json" if path.is_dir() or path.name != "config.json" else path
    try:
        data = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise UserError(
            "lacks config.json; is this a Hugging Face model directory?", path=path
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read config.json: {exc}", path=cfg_path) from exc
    if not isinstance(data, dict):
        raise UserError("config.json is not a JSON object", path=cfg_path)
    return data, str(path)


def _quant_config(cfg: Mapping[str, object]) -> Mapping[str, object] | None:
    qc = cfg.get("quantization_config") or cfg.get("compression_config")
    if qc is None:
        text = cfg.get("text_config")
        if isinstance(text, Mapping):
            qc = text.get("quantization_config")
    return qc if isinstance(qc, Mapping) and qc else None


def _bits(args: object) -> tuple[str | None, int | None]:
    if not isinstance(args, Mapping):
        return None, None
    bits = args.get("num_bits")
    return (str(args.get("type") or "int").lower(), int(bits) if isinstance(bits, int) else None)


def model_quantization(
    model: str | os.PathLike[str] | Mapping[str, object],
) -> Quantization | None:
    """The variant's quantization from config.json (a model dir, its config.json or the dict)."""
    cfg, _ = read_config(model)
    qc = _quant_config(cfg)
    if qc is None:
        return None
    method = str(qc.get("quant_method") or "unknown").lower()
    kv = qc.get("kv_cache_scheme")
    kv_cache = None
    if isinstance(kv, Mapping):
        ktype, kbits = _bits(kv)
        kv_cache = f"{ktype}{kbits}" if kbits else ktype
    fmt = qc.get("format") if isinstance(qc.get("format"), str) else None
    if method == "compressed-tensors":
        groups = qc.get("config_groups")
        found: list[Quantization] = []
        for group in (groups or {}).values() if isinstance(groups, Mapping) else ():
            if not isinstance(group, Mapping):
                continue
            wtype, wbits = _bits(group.get("weights"))
            atype, abits = _bits(group.get("input_activations"))
            acts = group.get("input_activations")
            acts = acts if isinstance(acts, Mapping) else {}
            weights = group.get("weights")
            weights = weights if isinstance(weights, Mapping) else {}
            if wbits is None:
                continue
            if wtype == "float" and wbits == 8:
                kind = "fp8"
            elif wtype == "int" and abits == 8 and atype == "int" and wbits == 8:
                kind = "int8-w8a8"
            elif wtype == "int" and abits is None:
                kind = "weight-only"
            else:
                kind = "other"  # nvfp4, mxfp4, W4A8, ...
            found.append(
                Quantization(
                    kind=kind,
                    method=method,
                    weight_bits=wbits,
                    weight_strategy=str(weights.get("strategy") or "") or None,
                    input_symmetric=bool(acts.get("symmetric", True)) if acts else None,
                    input_dynamic=bool(acts.get("dynamic", False)) if acts else None,
                    format=str(group.get("format") or fmt or "") or None,
                    kv_cache=kv_cache,
                )
            )
        if not found:
            if kv_cache:
                return Quantization(kind="other", method=method, format=fmt, kv_cache=kv_cache)
            return None
        # A mixed model is as strict as its strictest group: W8A8 int8 and fp8 first.
        for kind in ("int8-w8a8", "fp8", "weight-only", "other"):
            for q in found:
                if q.kind == kind:
                    return q
    if method in ("fp8", "fbgemm_fp8"):
        strategy = "block" if qc.get("weight_block_size") else None
        return Quantization(kind="fp8", method=method, weight_bits=8, weight_strategy=strategy)
    if method in ("awq", "gptq", "auto-round", "auto_round"):
        bits = qc.get("bits") or qc.get("w_bit")
        return Quantization(
            kind="weight-only",
            method=method,
            weight_bits=int(bits) if isinstance(bits, int) else None,
            format=str(qc.get("version") or qc.get("checkpoint_format") or "") or None,
        )
    return Quantization(kind="other", method=method, format=fmt, kv_cache=kv_cache)


def _dtype_name(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return _DTYPE_ALIASES.get(value.lower().removeprefix("torch."))


def model_dtype(model: str | os.PathLike[str] | Mapping[str, object]) -> str:
    """config.json's ``dtype`` (transformers 5) or ``torch_dtype``; float32 when absent."""
    cfg, _ = read_config(model)
    for source in (cfg, cfg.get("text_config")):
        if isinstance(source, Mapping):
            for key in ("dtype", "torch_dtype"):
                name = _dtype_name(source.get(key))
                if name is not None:
                    return name
    return "float32"
