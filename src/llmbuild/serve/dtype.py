"""The dtype a variant is served with: one its vLLM kernels accept on this CPU or device.

Standard library only. ``cpu_features`` reads /proc/cpuinfo (or given text);
``model_quantization`` and ``model_dtype`` read the model's config.json; ``choose_dtype``
resolves ``auto`` (or checks a pinned dtype) from the three. The rules follow vLLM 0.32's
code (file:line under site-packages/vllm):

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

import json
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from llmbuild.errors import UserError

DTYPES16 = ("bfloat16", "float16")
#: vLLM refuses float16 for these model types (config/model.py:2380-2385).
NO_FLOAT16_MODELS = frozenset({"gemma2", "gemma3", "gemma3_text", "glm4"})
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
_MACHINES = {"amd64": "x86_64", "i686": "x86", "i386": "x86", "arm64": "aarch64"}
_X86_VENDORS = ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls")


class CpuFeatures(frozenset):
    """The CPU's feature flags (lower case), with its model name and architecture."""

    model_name: str
    arch: str

    def __new__(cls, flags: Iterable[str] = (), *, model_name: str = "", arch: str = ""):
        self = super().__new__(cls, (f.lower() for f in flags))
        self.model_name = model_name or "unknown CPU"
        self.arch = arch or "unknown"
        return self

    def __reduce__(self):  # keep the attributes through copy/pickle
        return (_rebuild, (tuple(self), self.model_name, self.arch))

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "x86")

    @property
    def has_amx(self) -> bool:
        """AMX tiles: what torch.cpu._is_amx_tile_supported() reports (x86 only)."""
        return self.is_x86 and "amx_tile" in self

    @property
    def has_avx512_bf16(self) -> bool:
        return "avx512_bf16" in self

    @property
    def has_avx512(self) -> bool:
        return "avx512f" in self

    @property
    def has_bf16(self) -> bool:
        """Native bfloat16 arithmetic (x86 AVX-512/AMX bf16, Arm FEAT_BF16, POWER10 MMA)."""
        return bool(self & {"avx512_bf16", "amx_bf16", "avx_ne_convert", "bf16", "sve_bf16"})

    @property
    def has_fp16(self) -> bool:
        return bool(self & {"avx512_fp16", "amx_fp16", "fphp", "asimdhp"})

    def summary(self) -> dict[str, object]:
        return {
            "model": self.model_name,
            "arch": self.arch,
            "has_amx": self.has_amx,
            "has_avx512_bf16": self.has_avx512_bf16,
        }


def _rebuild(flags: tuple[str, ...], model_name: str, arch: str) -> CpuFeatures:
    return CpuFeatures(flags, model_name=model_name, arch=arch)


def cpu_features(cpuinfo: str | None = None, *, arch: str | None = None) -> CpuFeatures:
    """Flags, model name and architecture from /proc/cpuinfo text (this machine's if None).

    x86 lists ``flags``, aarch64 ``Features``; the architecture is ``arch`` if given, this
    machine's for its own cpuinfo, else inferred from the text.
    """
    own = cpuinfo is None
    if own:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    assert cpuinfo is not None
    flags: set[str] = set()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        value = value.strip()
        if key in ("flags", "features"):
            if not flags:  # the first processor speaks for all
                flags.update(value.split())
        elif key not in fields and value:
            fields[key] = value
    if arch is None:
        if own:
            machine = platform.machine().lower()
            arch = _MACHINES.get(machine, machine)
        elif "sse2" in flags or fields.get("vendor_id", "").startswith(_X86_VENDORS):
            arch = "x86_64"
        elif "cpu implementer" in fields or "asimd" in flags:
            arch = "aarch64"
        elif fields.get("cpu", "").upper().startswith("POWER"):
            arch = "ppc64le"
        elif "isa" in fields and fields["isa"].startswith("rv"):
            arch = "riscv64"
        elif "s390" in fields.get("vendor_id", "").lower():
            arch = "s390x"
        else:
            arch = "unknown"
    name = fields.get("model name") or fields.get("cpu") or fields.get("hardware") or ""
    if not name and "cpu implementer" in fields:
        name = f"Arm implementer {fields['cpu implementer']} part {fields.get('cpu part', '?')}"
    return CpuFeatures(flags, model_name=name, arch=arch)


# --- the model's config.json ----------------------------------------------------------------


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


def _config(model: str | os.PathLike[str] | Mapping[str, object]) -> tuple[dict, str]:
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
    cfg, _ = _config(model)
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
    cfg, _ = _config(model)
    for source in (cfg, cfg.get("text_config")):
        if isinstance(source, Mapping):
            for key in ("dtype", "torch_dtype"):
                name = _dtype_name(source.get(key))
                if name is not None:
                    return name
    return "float32"


# --- the decision ---------------------------------------------------------------------------


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
    cfg, label = _config(model)
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
        if requested not in ("float32", *DTYPES16):
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
