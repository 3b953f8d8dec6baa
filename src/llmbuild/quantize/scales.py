"""SmoothQuant smoothing scales as their own artifact (the seeds' --scale-output/--scale-input).

A scale file is safetensors: one float32 vector per smoothed layer, keyed by that layer's
module name (e.g. ``model.layers.0.input_layernorm``), and metadata naming the format, the
smoothing strength and, per smoothed layer, the linear layers it balances. Applying a file is
the same arithmetic llm-compressor's SmoothQuantModifier does: the smoothed layer's weight
(and bias) is divided by the scales, each balance layer's weight columns multiplied by them,
so the float model computes the same function and activation outliers move into the weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llmbuild.errors import UserError

FORMAT = "llmbuild-smoothquant-scales/1"


@dataclass
class SmoothingScales:
    strength: float
    scales: dict[str, object]  # smooth layer name -> torch.Tensor (1-D, float32)
    balance: dict[str, list[str]]  # smooth layer name -> balance linear layer names
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.scales) != set(self.balance):
            raise ValueError("scales and balance name different layers")

    def to_bytes(self) -> bytes:
        """The safetensors file, written here so that its bytes are a function of its content:
        safetensors' own writer puts the metadata keys in hash order, which changes from one
        process to the next (and the audit rebuilds deterministic steps byte for byte)."""
        import torch

        meta = {
            "format": FORMAT,
            "smoothing_strength": repr(float(self.strength)),
            "balance_layers": json.dumps(self.balance, sort_keys=True),
            **self.extra,
        }
        header: dict[str, object] = {"__metadata__": dict(sorted(meta.items()))}
        blobs, offset = [], 0
        for name in sorted(self.scales):
            data = self.scales[name].detach().to(torch.float32).contiguous().cpu().numpy()
            raw = data.astype("<f4").tobytes()
            header[name] = {
                "dtype": "F32",
                "shape": list(data.shape),
                "data_offsets": [offset, offset + len(raw)],
            }
            blobs.append(raw)
            offset += len(raw)
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors pads
        return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def read_metadata(path: str | Path, *, field: str = "--scale-input") -> dict[str, str]:
    """A scale file's metadata from its safetensors header, without torch (for planning)."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= 100_000_000:
                raise ValueError(f"header length {size}")
            header = json.loads(fh.read(size))
    except (OSError, ValueError) as exc:
        raise UserError(f"not a safetensors scale file ({exc})", path=path, field=field) from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise UserError(
            f"format {got!r}, expected {FORMAT!r}; make it with `llmbuild quantize scales`",
            path=path,
            field=field,
        )
    return {str(k): str(v) for k, v in meta.items()}


def load(path: Path) -> SmoothingScales:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise UserError(
            f"not a safetensors scale file ({exc})", path=path, field="--scale-input"
        ) from exc
    if meta.get("format") != FORMAT:
        raise UserError(
            f"format {meta.get('format')!r}, expected {FORMAT!r}; make it with "
            "`llmbuild quantize smoothquant --scale-output`",
            path=path,
            field="format",
        )
    try:
        balance = json.loads(meta["balance_layers"])
        strength = float(meta["smoothing_strength"])
    except (KeyError, ValueError) as exc:
        raise UserError(f"bad metadata ({exc})", path=path, field="balance_layers") from exc
    if set(balance) != set(tensors):
        raise UserError(
            "metadata and tensors name different layers", path=path, field="balance_layers"
        )
    extra = {
        k: v for k, v in meta.items() if k not in ("format", "smoothing_strength", "balance_layers")
    }
    return SmoothingScales(strength=strength, scales=tensors, balance=balance, extra=extra)


def check_against(model, sc: SmoothingScales, path: Path) -> None:
    """Every named layer exists and has the width of its scale vector."""
    modules: Mapping[str, object] = dict(model.named_modules())
    for name, s in sc.scales.items():
        if s.ndim != 1:
            raise UserError(
                f"scale tensor has shape {tuple(s.shape)}, expected 1-D", path=path, field=name
            )
        smooth = modules.get(name)
        if smooth is None or getattr(smooth, "weight", None) is None:
            raise UserError(
                "no such layer with a weight in the model; the scales were made "
                "for another architecture",
                path=path,
                field=name,
            )
        if smooth.weight.shape[0] != s.shape[0]:
            raise UserError(
                f"{s.shape[0]} scales for a layer of width "
                f"{smooth.weight.shape[0]}; the scales were made for another model",
                path=path,
                field=name,
            )
        for bname in sc.balance[name]:
            bal = modules.get(bname)
            if bal is None or getattr(bal, "weight", None) is None:
                raise UserError("balance layer not in the model", path=path, field=bname)
            if bal.weight.shape[1] != s.shape[0]:
                raise UserError(
                    f"in_features {bal.weight.shape[1]} != {s.shape[0]} scales",
                    path=path,
                    field=bname,
                )


def apply(model, sc: SmoothingScales) -> None:
    """Fold the scales into the model in place (same ops as llm-compressor's SmoothQuant)."""
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, s in sc.scales.items():
            smooth = modules[name]
            s = s.to(device=smooth.weight.device, dtype=smooth.weight.dtype)
            for bname in sc.balance[name]:
                bal = modules[bname]
                bal.weight.data = bal.weight * s.view(1, -1)
            if smooth.weight.ndim == 1:
                smooth.weight.data = smooth.weight / s
            else:
                smooth.weight.data = smooth.weight / s.view(-1, 1)
            if getattr(smooth, "bias", None) is not None:
                smooth.bias.data = smooth.bias / s
