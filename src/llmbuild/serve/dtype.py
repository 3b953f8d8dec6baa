"""The dtype a variant is served with: one its vLLM kernels accept on this CPU or device.

Standard library only. ``cpu_features`` (serve/cpuinfo.py) reads /proc/cpuinfo (or given
text); ``model_quantization`` and ``model_dtype`` (serve/quantconfig.py) read the model's
config.json; ``choose_dtype`` resolves ``auto`` (or checks a pinned dtype) from the three.
The rules follow vLLM 0.32's code (file:line under site-packages/vllm):

* int8 W8A8 on an x86 CPU with AMX (amx_tile) and symmetric activations runs
  ``int8_scaled_mm_with_quant`` (model_executor/kernels/linear/scaled_mm/cpu.py:51-56, with
  check_cpu_sgl_kernel in model_executor/layers/utils.py:440,458), which refuses float32
  activations ("expect A to be bfloat16 or half"); without AMX it uses oneDNN
  (scaled_mm/cpu.py:59,136-139), which takes the model's dtype, float32 included.
* fp8 with block or per-tensor-static weights on an AMX CPU runs ``fp8_scaled_mm_cpu``
  (scaled_mm/cpu.py:229-242,344-376,413), which also needs bf16/fp16 activations; other
  compressed-tensors fp8 (e.g. FP8_DYNAMIC: channel weights, per-token activations) runs
  torch._scaled_mm (ChannelWiseTorchFP8ScaledMMLinearKernel, scaled_mm/pytorch.py:199-266),
  which takes float32; vLLM's own ``fp8`` quant method accepts only bf16/fp16
  (model_executor/layers/quantization/fp8.py:143, checked at config/vllm.py:907).
* 4-bit weight-only on CPU runs ``cpu_gemm_wna16`` (mixed_precision/cpu.py:198,210), built for
  BFloat16 and Half only (no float instance in _C/_C_AVX512); AWQ/GPTQ configs accept only
  fp16/bf16 (auto_awq.py:230, auto_gptq.py:179).
* on cuda, cutlass_scaled_mm asserts bf16/fp16 output (_custom_ops.py:800).
* vLLM's own ``auto`` downcasts a float32 model to bf16 (config/model.py:2422-2424); this
  module keeps a float32 model in float32 where its kernels allow it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

from llmbuild.dtypes import DTYPES
from llmbuild.errors import UserError
from llmbuild.serve.cpuinfo import CpuFeatures, cpu_features
from llmbuild.serve.quantconfig import Quantization, model_dtype, model_quantization, read_config

DTYPES16 = ("bfloat16", "float16")
#: vLLM refuses float16 for these model types (config/model.py:2380-2385).
NO_FLOAT16_MODELS = frozenset({"gemma2", "gemma3", "gemma3_text", "glm4"})


class DtypeChoice(NamedTuple):
    dtype: str
    reason: str


def _half_for(features: CpuFeatures | None, device: str) -> str:
    """The 16-bit dtype to take when float32 will not do: bf16 unless only fp16 is native."""
    if device != "cpu" or features is None:
        return "bfloat16"
    if features.arch.startswith("ppc"):
        return "bfloat16"  # the VSX WNA16 GEMM supports only BFloat16 (cpu_wna16.cpp)
    if not features.has_bf16 and features.has_fp16:
        return "float16"
    return "bfloat16"


def _refusal(q: Quantization, device: str, features: CpuFeatures | None) -> str | None:
    """Why vLLM's kernels for ``q`` refuse float32 activations here (None: they take it)."""
    if q.method == "fp8":
        return "vLLM's fp8 quantization accepts only bfloat16/float16 activations"
    if q.method in ("awq", "gptq"):
        return f"vLLM's {q.method.upper()} kernels accept only bfloat16/float16 activations"
    if device == "cuda" and q.weight_bits is not None:
        return "vLLM's quantized CUDA kernels (cutlass, marlin) take only 16-bit activations"
    if device != "cpu" or features is None:
        return None
    if q.kind == "int8-w8a8" and features.has_amx and q.input_symmetric is not False:
        return "vLLM's int8 W8A8 kernel on this AMX CPU takes 16-bit activations"
    if q.kind == "fp8" and features.has_amx and _amx_fp8_kernel(q, features):
        return "vLLM's fp8 kernel on this AMX CPU takes 16-bit activations"
    if q.kind == "weight-only" and (q.weight_bits or 4) == 4:
        return "vLLM's CPU int4 weight-only kernel (cpu_gemm_wna16) takes only 16-bit activations"
    return None


def _amx_fp8_kernel(q: Quantization, features: CpuFeatures) -> bool:
    """Whether an AMX fp8 kernel (16-bit activations only) serves ``q`` on this AMX CPU.

    vLLM's CPU fp8 kernels, in order (kernels/linear/__init__.py:462-467,495-497): the AMX-FP8
    W8A8 ones (amx_fp8 CPUs), the AMX per-tensor one (tensor weights, static activations), the
    AMX block ones; anything else goes to torch._scaled_mm, which takes float32 too.
    """
    if "amx_fp8" in features or q.method != "compressed-tensors":
        return True
    if q.weight_strategy in ("block", None):
        return True
    return q.weight_strategy == "tensor" and q.input_dynamic is False


def choose_dtype(
    requested: str,
    model: str | os.PathLike[str] | Mapping[str, object],
    device: str = "cpu",
    features: CpuFeatures | None = None,
    *,
    path: object = None,
) -> DtypeChoice:
    """The dtype to serve ``model`` with on ``device`` (``features``: the CPU's, for cpu).

    ``requested`` "auto" resolves to the model's own dtype unless the kernels of its
    quantization need 16-bit activations here; a pinned dtype is used as given unless the
    kernels refuse it, which is a one-line UserError naming ``serve.dtype`` and the fix.
    """
    cfg, label = read_config(model)
    where = path if path is not None else label
    own = model_dtype(cfg)
    q = model_quantization(cfg)
    if q is not None and q.kind == "other" and q.weight_bits is None:
        q = None  # a KV-cache-only scheme: the linear kernels are the unquantized ones
    model_type = str(cfg.get("model_type") or "")
    if device == "cpu" and features is None:
        features = cpu_features()
    half = _half_for(features, device)
    if model_type in NO_FLOAT16_MODELS:
        half = "bfloat16"
    sixteen = own if own in DTYPES16 else half
    refusal = _refusal(q, device, features) if q is not None else None

    if requested != "auto":
        if requested not in DTYPES:
            raise UserError(
                f"unknown dtype {requested!r}; use auto, float32, bfloat16 or float16",
                path=where,
                field="serve.dtype",
            )
        if requested == "float32" and refusal is not None:
            raise UserError(
                f"float32 cannot serve this {q.describe()} variant on {_where(device, features)}: "
                f"{refusal}; set serve.dtype to auto or {sixteen}",
                path=where,
                field="serve.dtype",
            )
        if requested == "float16" and model_type in NO_FLOAT16_MODELS:
            raise UserError(
                f"vLLM refuses float16 for model type {model_type} (numerical instability); "
                "set serve.dtype to auto or bfloat16",
                path=where,
                field="serve.dtype",
            )
        return DtypeChoice(requested, f"pinned by serve.dtype (the model is {own})")

    if q is None:
        why = f"an unquantized {own} model is served in its own dtype"
        if own == "float32":
            why += " (vLLM's auto would downcast it to bfloat16)"
        return DtypeChoice(own, why)
    if refusal is not None:
        if own in DTYPES16:
            return DtypeChoice(own, f"{refusal}; the model's own {own} is one")
        return DtypeChoice(sixteen, refusal)
    if device != "cpu":
        if own in DTYPES16:
            return DtypeChoice(own, f"a {q.describe()} model in its own {own} on {device}")
        return DtypeChoice(
            sixteen, f"quantized kernels on {device} take 16-bit activations, not float32"
        )
    assert features is not None
    if q.kind == "fp8":
        return DtypeChoice(
            sixteen,
            "fp8 checkpoints are made for 16-bit activations, which every vLLM CPU fp8 kernel "
            "takes (its torch._scaled_mm path here would also take float32)",
        )
    if q.kind == "int8-w8a8":
        if features.has_amx:  # asymmetric activations: the oneDNN kernel even with AMX
            path_note = "asymmetric int8 activations use the oneDNN kernel, which takes"
        elif features.is_x86:
            path_note = "int8 W8A8 without AMX uses the oneDNN kernel, which takes"
        else:
            path_note = f"int8 W8A8 on {features.arch} uses the oneDNN kernel, which takes"
        return DtypeChoice(own, f"{path_note} the model's {own}")
    return DtypeChoice(own, f"a {q.describe()} model in its own {own}")


def _where(device: str, features: CpuFeatures | None) -> str:
    if device != "cpu" or features is None:
        return device
    amx = "AMX" if features.has_amx else "no AMX"
    return f"this CPU ({features.model_name}, {features.arch}, {amx})"


def w4a16_path(features: CpuFeatures) -> tuple[str | None, str]:
    """(dtype, kernel) a float32 int4 weight-only (W4A16) model is served with on this CPU.

    vLLM's x86 AVX2 build (_C_AVX2) has no cpu_gemm_wna16: no dtype serves W4A16 there.
    """
    if features.is_x86 and not features.has_avx512:
        return None, "no kernel: vLLM's AVX2 build lacks cpu_gemm_wna16"
    isa = "amx" if features.has_amx else "vsx" if features.arch.startswith("ppc") else "vec"
    return _half_for(features, "cpu"), f"cpu_gemm_wna16, isa {isa}"


def int8_path(features: CpuFeatures) -> tuple[str, str]:
    """(dtype, kernel) an int8 W8A8 float32 model is served with on this CPU, for `serve cpu`."""
    if features.has_amx:
        return _half_for(features, "cpu"), "AMX kernel int8_scaled_mm_with_quant"
    return "float32", "oneDNN kernel"
