"""What a benchmark sends, beyond prompts: the API, forced or natural output lengths,
speculative-decoding accounting and a weighted mix of model (LoRA adapter) names.

Pure and dependency-free, so the CLI can validate flags before importing the HTTP client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llmbuild.errors import UserError

APIS = ("completions", "chat")
OUTPUT_MODES = ("forced", "natural")


@dataclass(frozen=True)
class Workload:
    """How requests are sent.

    ``api``: ``completions`` (/v1/completions, the raw prompt) or ``chat``
    (/v1/chat/completions, the prompt as one user message; the server adds its chat template,
    so its prompt token count is larger than the prompt's own).
    ``output_mode``: ``forced`` sends ``ignore_eos`` and ``min_tokens`` so every request
    generates exactly its output length; ``natural`` sends it only as ``max_tokens``.
    ``speculative``: output tokens must come from the stream's usage (with speculative
    decoding one chunk carries several tokens, so counting chunks undercounts); a stream
    without usage is then a failed request, not a silently wrong TPOT.
    """

    api: str = "completions"
    output_mode: str = "forced"
    speculative: bool = False

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise UserError(
                f"unknown API {self.api!r}; use one of {', '.join(APIS)}", field="--api"
            )
        if self.output_mode not in OUTPUT_MODES:
            raise UserError(
                f"unknown output mode {self.output_mode!r}; use one of {', '.join(OUTPUT_MODES)}",
                field="--output-mode",
            )

    @property
    def path(self) -> str:
        return "completions" if self.api == "completions" else "chat/completions"

    @property
    def forced(self) -> bool:
        return self.output_mode == "forced"


@dataclass(frozen=True)
class ModelMix:
    """Served model names (the base model and LoRA adapters) with relative weights; each
    request draws its ``model`` field from it, seeded, for multi-LoRA traffic."""

    names: tuple[str, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.names or len(self.names) != len(self.weights):
            raise UserError("needs name=weight pairs, e.g. lora1=3,lora2=1", field="--lora-mix")
        if len(set(self.names)) != len(self.names):
            raise UserError(f"names repeat: {list(self.names)}", field="--lora-mix")
        if any(not (w >= 0 and math.isfinite(w)) for w in self.weights) or sum(self.weights) <= 0:
            raise UserError(
                f"weights must be >= 0 with a positive sum, got {list(self.weights)}",
                field="--lora-mix",
            )

    @classmethod
    def parse(cls, text: str) -> ModelMix:
        """``"lora1=3,lora2=1,base"``: a name without a weight has weight 1."""
        names, weights = [], []
        for part in (p.strip() for p in text.replace(" ", ",").split(",")):
            if not part:
                continue
            name, _, weight = part.partition("=")
            if not name.strip():
                raise UserError(f"empty model name in {text!r}", field="--lora-mix")
            try:
                w = float(weight) if weight.strip() else 1.0
            except ValueError:
                raise UserError(
                    f"weight {weight!r} of {name!r} is not a number", field="--lora-mix"
                ) from None
            names.append(name.strip())
            weights.append(w)
        return cls(tuple(names), tuple(weights))

    def draw(self, n: int, rng: np.random.Generator) -> list[str]:
        p = np.asarray(self.weights, dtype=float)
        idx = rng.choice(len(self.names), size=n, p=p / p.sum())
        return [self.names[i] for i in idx]

    def __str__(self) -> str:
        return ",".join(f"{n}={w:g}" for n, w in zip(self.names, self.weights, strict=True))
