"""SmoothQuant scales with llm-compressor's SmoothQuantModifier, kept as their own artifact.

Heavy imports (torch, llmcompressor) happen inside the functions; import this module only
from a CLI handler or a test that runs in the quantize environment.
"""

from __future__ import annotations

from llmbuild.quantize import scales as scales_mod


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


def compute(model, dataset, *, strength: float, seq_length: int, extra: dict[str, str]):
    """Calibrate SmoothQuant on ``model`` (smoothed in place) and return its scales.

    ``dataset`` is a tokenized datasets.Dataset; the scales are computed on the float model
    alone (no quantization in the same pass), as the seeds' --generate-scale does, so one
    scale file serves every scheme that smooths.
    """
    from llmcompressor import oneshot

    sq = _recording_smoothquant_cls()(smoothing_strength=strength)
    oneshot(
        model=model,
        recipe=[sq],
        dataset=dataset,
        num_calibration_samples=len(dataset),
        max_seq_length=seq_length,
        shuffle_calibration_samples=False,
    )
    names = {id(m): n for n, m in model.named_modules()}
    recorded = sq.recorded_ or []
    if not recorded:
        raise RuntimeError("SmoothQuant smoothed no layer: no mapping matched the model")
    return scales_mod.SmoothingScales(
        strength=float(strength),
        scales={n: s for n, s, _ in recorded},
        balance={n: [names[id(b)] for b in bl] for n, _, bl in recorded},
        extra={"architecture": type(model).__name__, **extra},
    )
