"""Megatron LoRA adapter -> Hugging Face PEFT adapter directory, or merged into a full HF model.

The Megatron-side adapter (what llmbuild's training writes; define yours the same way) is a
directory with

- ``lora_config.json``: ``{"r": 8, "alpha": 16, "dropout": 0.0, "use_rslora": false,
  "target_modules": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]}``
  (``target_modules`` optional: the modules present are what counts);
- ``adapter.safetensors``: the global (tensor-parallel gathered) LoRA weights, named by the
  megatron module they adapt, ``{i}`` the global layer index::

    decoder.layers.{i}.self_attention.linear_qkv.lora_A.weight   [r, hidden]
    decoder.layers.{i}.self_attention.linear_qkv.lora_B.weight   [(heads + 2 groups) head_dim, r]
    decoder.layers.{i}.self_attention.linear_proj.lora_A.weight  [r, heads head_dim]
    decoder.layers.{i}.self_attention.linear_proj.lora_B.weight  [hidden, r]
    decoder.layers.{i}.mlp.linear_fc1.lora_A.weight              [r, hidden]
    decoder.layers.{i}.mlp.linear_fc1.lora_B.weight              [2 ffn, r]  (gate rows, then up)
    decoder.layers.{i}.mlp.linear_fc2.lora_A.weight              [r, ffn]
    decoder.layers.{i}.mlp.linear_fc2.lora_B.weight              [hidden, r]

  ``lora_B`` rows follow the megatron weight they adapt: linear_qkv's are in megatron's fused,
  group-interleaved QKV order (see ``weights.py``), and split the way that weight splits.
  NeMo's names for the same tensors, ``...linear_qkv.adapter.linear_in.weight`` (A) and
  ``.adapter.linear_out.weight`` (B), are accepted too. The update is ``W x + s B A x`` with
  ``s = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), as in PEFT.

PEFT has no fused modules, so a fused megatron LoRA becomes several PEFT LoRAs that share A:
``linear_qkv`` -> ``q_proj``, ``k_proj``, ``v_proj`` (lora_A copied, lora_B's rows split as
QKV weights are); ``linear_fc1`` -> ``gate_proj``, ``up_proj``. That is exact: the rows of
``B A`` are the rows of B times A. The output uses PEFT's standard names
(``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight``), which is what vLLM's
``--lora-modules`` reads.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbuild import hfdir
from llmbuild.convert import registry as R
from llmbuild.convert import weights as W
from llmbuild.convert.formats import safetensors_io as S
from llmbuild.errors import UserError

if TYPE_CHECKING:
    import torch

    from llmbuild.mcore.description import ModelArgs

LORA_CONFIG = "lora_config.json"
LORA_WEIGHTS = "adapter.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

# megatron module -> (HF modules, how its weight, and so lora_B's rows, combine: ``weights``)
MODULES: dict[str, tuple[tuple[str, ...], W.Combination]] = {
    "self_attention.linear_qkv": (
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        W.QKV,
    ),
    "self_attention.linear_proj": (("self_attn.o_proj",), W.ROW),
    "mlp.linear_fc1": (("mlp.gate_proj", "mlp.up_proj"), W.GATE_UP),
    "mlp.linear_fc2": (("mlp.down_proj",), W.ROW),
}
_KEY = re.compile(
    r"^decoder\.layers\.(\d+)\.(" + "|".join(re.escape(m) for m in MODULES) + r")\."
    r"(lora_A|lora_B|adapter\.linear_in|adapter\.linear_out)\.weight$"
)
_ALIASES = {"adapter.linear_in": "lora_A", "adapter.linear_out": "lora_B"}


@dataclass(frozen=True)
class LoraConfig:
    r: int
    alpha: float
    dropout: float = 0.0
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if self.r < 1:
            raise UserError(f"r must be >= 1, got {self.r}", field="r")
        if self.alpha <= 0:
            raise UserError(f"alpha must be > 0, got {self.alpha}", field="alpha")

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


@dataclass
class MegatronLora:
    """A checked Megatron LoRA adapter: config and (layer, module) -> (A key, B key)."""

    dir: Path
    config: LoraConfig
    pairs: dict[tuple[int, str], tuple[str, str]]
    weights: S.LazyHFWeights

    @property
    def modules(self) -> list[str]:
        return sorted({m for _, m in self.pairs})


def _expected_shapes(
    module: str, args: ModelArgs, r: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(A shape, B shape) of a LoRA on this megatron module."""
    h, ffn = args.hidden_size, args.ffn_hidden_size
    q = args.num_attention_heads * args.kv_channels
    qkv = q + 2 * args.num_query_groups * args.kv_channels
    in_out = {
        "self_attention.linear_qkv": (h, qkv),
        "self_attention.linear_proj": (q, h),
        "mlp.linear_fc1": (h, 2 * ffn),
        "mlp.linear_fc2": (ffn, h),
    }[module]
    return (r, in_out[0]), (in_out[1], r)


def open_lora(lora_dir: str | Path, args: ModelArgs) -> MegatronLora:
    """Read and check a Megatron LoRA adapter against the base model's megatron args."""
    d = Path(lora_dir)
    cfg_path = d / LORA_CONFIG
    if not cfg_path.is_file():
        raise UserError(f"no {LORA_CONFIG}: not a Megatron LoRA adapter directory", path=d)
    try:
        raw = json.loads(cfg_path.read_text())
        config = LoraConfig(
            r=int(raw["r"]),
            alpha=float(raw.get("alpha", raw.get("lora_alpha", raw["r"]))),
            dropout=float(raw.get("dropout", 0.0)),
            use_rslora=bool(raw.get("use_rslora", False)),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"unreadable LoRA config ({exc!r})", path=cfg_path) from exc
    if not (d / LORA_WEIGHTS).is_file():
        raise UserError(f"no {LORA_WEIGHTS}", path=d)
    weights = S.LazyHFWeights.from_file(d / LORA_WEIGHTS)
    found: dict[tuple[int, str], dict[str, str]] = {}
    for key in weights:
        m = _KEY.match(key)
        if m is None:
            raise UserError(
                f"tensor {key!r} is not a LoRA weight of a known module ({', '.join(MODULES)})",
                path=d / LORA_WEIGHTS,
            )
        layer, module, which = int(m.group(1)), m.group(2), _ALIASES.get(m.group(3), m.group(3))
        if layer >= args.num_layers:
            raise UserError(
                f"{key}: layer {layer} >= the base model's {args.num_layers} layers",
                path=d / LORA_WEIGHTS,
            )
        found.setdefault((layer, module), {})[which] = key
    if not found:
        raise UserError("no LoRA tensors", path=d / LORA_WEIGHTS)
    pairs: dict[tuple[int, str], tuple[str, str]] = {}
    for (layer, module), ab in sorted(found.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise UserError(
                f"layer {layer} {module}: lora_A and lora_B must both be present",
                path=d / LORA_WEIGHTS,
            )
        want_a, want_b = _expected_shapes(module, args, config.r)
        for which, want in (("lora_A", want_a), ("lora_B", want_b)):
            got = weights.infos[ab[which]].shape
            if got != want:
                raise UserError(
                    f"{ab[which]} has shape {list(got)}, expected {list(want)} "
                    f"(r={config.r} and the base model's sizes)",
                    path=d / LORA_WEIGHTS,
                )
        pairs[(layer, module)] = (ab["lora_A"], ab["lora_B"])
    return MegatronLora(d, config, pairs, weights)


def peft_key(layer: int, hf_module: str, which: str) -> str:
    return f"{PEFT_PREFIX}model.layers.{layer}.{hf_module}.{which}.weight"


def _split_b(module: str, b: torch.Tensor, args: ModelArgs) -> list[torch.Tensor]:
    """lora_B of a megatron module -> the lora_B of each of its HF modules (its rows split as
    the module's weight splits)."""
    return MODULES[module][1].split(b, args)


def hf_loras(lora: MegatronLora, args: ModelArgs) -> Iterator[tuple[int, str, Any, Any]]:
    """(layer, HF module, A, B) of every PEFT LoRA, from the megatron pairs (pure split)."""
    for (layer, module), (ka, kb) in lora.pairs.items():
        a = lora.weights[ka]
        parts = _split_b(module, lora.weights[kb], args)
        for name, part in zip(MODULES[module][0], parts, strict=True):
            yield layer, name, a, part


def peft_config(lora: MegatronLora, base_name: str) -> dict[str, Any]:
    targets = sorted({h.split(".")[-1] for m in lora.modules for h in MODULES[m][0]})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": lora.config.r,
        "lora_alpha": lora.config.alpha,
        "lora_dropout": lora.config.dropout,
        "use_rslora": lora.config.use_rslora,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
    }


def write_peft(lora: MegatronLora, args: ModelArgs, out_dir: Path, base_name: str) -> dict:
    """adapter_config.json + adapter_model.safetensors into ``out_dir`` (existing, empty)."""
    tensors: dict[str, torch.Tensor] = {}
    for layer, name, a, b in hf_loras(lora, args):
        tensors[peft_key(layer, name, "lora_A")] = a
        tensors[peft_key(layer, name, "lora_B")] = b.contiguous()
    specs = [
        S.TensorSpec(k, str(t.dtype).replace("torch.", ""), tuple(t.shape))
        for k, t in tensors.items()
    ]
    S.write_sharded(
        out_dir,
        specs,
        iter(tensors.values()),
        max_shard_bytes=1 << 62,
        metadata={"format": "pt"},
    )
    (out_dir / S.SINGLE).rename(out_dir / PEFT_WEIGHTS)
    cfg = peft_config(lora, base_name)
    (out_dir / PEFT_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return {"tensors": len(tensors), "target_modules": cfg["target_modules"], "r": lora.config.r}


def merged_tensors(
    lora: MegatronLora, args: ModelArgs, spec: R.ArchSpec, base: S.LazyHFWeights
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every base tensor, in the base's key-table order, with ``W + s B A`` on the adapted
    ones (computed in float32, cast back to W's dtype); about one layer's LoRA in memory."""
    import torch

    deltas: dict[str, tuple[int, str, int]] = {}  # HF weight -> (layer, module, part index)
    for layer, module in lora.pairs:
        for i, name in enumerate(MODULES[module][0]):
            deltas[f"model.layers.{layer}.{name}.weight"] = (layer, module, i)
    scale = lora.config.scale
    cache: dict[tuple[int, str], tuple[torch.Tensor, list[torch.Tensor]]] = {}
    for _, keys in R.key_table(spec, args).values():
        for k in keys:
            w = base[k]
            if k in deltas:
                layer, module, i = deltas[k]
                if (layer, module) not in cache:
                    cache.clear()
                    ka, kb = lora.pairs[(layer, module)]
                    a = lora.weights[ka].to(torch.float32)
                    cache[(layer, module)] = (a, _split_b(module, lora.weights[kb], args))
                a, parts = cache[(layer, module)]
                w = (w.to(torch.float32) + scale * (parts[i].to(torch.float32) @ a)).to(w.dtype)
            yield k, w


def write_merged(
    lora: MegatronLora,
    base_dir: Path,
    base_weights: S.LazyHFWeights,
    spec: R.ArchSpec,
    args: ModelArgs,
    out_dir: Path,
    *,
    max_shard_bytes: int,
) -> dict[str, Any]:
    """A complete HF directory of base + LoRA into ``out_dir`` (existing, empty): the base's
    config, generation config and tokenizer files, merged weights in the base's dtypes."""
    import shutil

    specs = []
    for _, keys in R.key_table(spec, args).values():
        for k in keys:
            info = base_weights.infos[k]
            specs.append(S.TensorSpec(k, S.torch_dtype(info.dtype), info.shape))
    files = S.write_sharded(
        out_dir,
        specs,
        (t for _, t in merged_tensors(lora, args, spec, base_weights)),
        max_shard_bytes=max_shard_bytes,
    )
    shutil.copy2(base_dir / "config.json", out_dir / "config.json")
    copied = hfdir.copy_companions(base_dir, out_dir)
    return {"weights": files, "copied": copied, "tensors": len(specs)}


def verify_peft_dir(out_dir: Path, base_dir: Path) -> None:
    """Load the adapter with PEFT onto the base model; every LoRA tensor must be consumed."""
    try:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(base_dir))
        peft_model = PeftModel.from_pretrained(model, str(out_dir))
        loaded = {k for k, _ in peft_model.named_parameters() if "lora_A" in k or "lora_B" in k}
    except Exception as exc:  # noqa: BLE001 - any failure means the adapter is not usable
        raise UserError(f"PEFT cannot load the adapter: {exc}", path=out_dir) from exc
    written = set(S.read_header(out_dir / PEFT_WEIGHTS)[0])
    # PEFT's parameter names carry the adapter name ("default") the file's keys leave out
    names = {k.replace(".default.", ".") for k in loaded}
    if names != written:
        raise UserError(
            f"PEFT loaded {len(names)} LoRA tensors, the file has {len(written)}: "
            f"e.g. {sorted(names ^ written)[:3]}",
            path=out_dir,
        )
