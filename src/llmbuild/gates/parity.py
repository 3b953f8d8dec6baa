"""`llmbuild gates parity`: megatron-core's logits on a torch_dist checkpoint against the Hugging
Face model's on the same token sequences.

    llmbuild gates parity --hf DIR --mcore DIR --direction hf2mg|mg2hf --output verdict.json
        [--mode auto|on|off] [--tolerance auto|FLOAT] [--compute-dtype float32|native]
        [--num-sequences 4] [--seq-length 32] [--seed 0] [--threads N] [--subject NAME]

hf2mg: ``--hf`` is the source, ``--mcore`` its conversion; mg2hf: ``--mcore`` is the (trained)
checkpoint, ``--hf`` its reconversion. Both models run on the CPU on ``--num-sequences`` random
sequences of ids below the HF vocabulary size: megatron-core's GPTModel built at TP=1/PP=1 (it
reshards a checkpoint saved at any TP/PP on load), and the transformers model from safetensors,
never ``trust_remote_code``. The source runs first; its logits are kept (fp32, sliced to the HF
vocabulary: megatron's embedding is padded) and its model freed before the other is loaded, so
the peak is one model and its load buffers.

Weights and compute. The weights are compared in the checkpoint's dtype (or the HF side's when
that is lower: a conversion with ``--dtype`` rounds, so the other side is rounded the same
way); both sides then hold the same values. By default both run in float32 (bf16/fp16 weights
are exact in fp32), so the gate sees the conversion, not two implementations' low-precision
rounding. ``--compute-dtype native`` runs in the weights' dtype instead (half the memory,
a coarser check).

Tolerance (``--tolerance auto``): max |logit diff| <= factor x max(1, max |source logit|), the
factor by compute dtype:

- float32: 1e-5. The weights are bit-identical; what remains is fp32 rounding in differently
  fused GEMMs (megatron's qkv and gate/up are one matrix each) and softmax/norm order, ~1e-7
  relative per op, measured at <= 1e-6 of the logits' scale on random models of 4-16 layers.
  Tiny random models (|logits| < 1) get the plain 1e-5; real models' logits (~10-30) the same
  relative allowance.
- bfloat16: 2**-3 (12.5%). bf16 keeps 8 significant bits (a logit is itself rounded to 2**-9 of
  its size) and the two implementations round every activation in a different order (HF's
  RMSNorm in fp32, megatron's in bf16; different attention kernels); the error grows through
  the layers: measured 1.1% of the scale on a 4-layer and 4.5% on a 16-layer random model.
- float16: 2**-6 (1.6%): 3 more bits; measured 0.16% (4 layers) and 0.4% (16 layers).

A wrong, swapped or corrupted tensor moves the logits by far more than the fp32 allowance; the
native bf16/fp16 allowances only catch gross errors.

``--mode auto`` runs when twice the parameters in the compute dtype plus a margin (1 GiB of
runtime, the logits buffers) fit in MemAvailable (/proc/meminfo), and otherwise writes a
``skipped`` verdict saying why (loading holds the state dict read from disk beside the model it
is copied into: twice the parameters at the peak; where there is no MemAvailable it runs);
``on`` always runs; ``off`` writes ``skipped`` without reading the inputs.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbuild.errors import UserError
from llmbuild.gates.parity_inputs import check_inputs, subject_of
from llmbuild.gates.parity_models import hf_logits, megatron_logits, token_ids
from llmbuild.schema import node

if TYPE_CHECKING:
    from llmbuild.mcore.model import ModelArgs, ModelDescription

DIRECTIONS = ("hf2mg", "mg2hf")
MODES = tuple(node("gates.parity")["enum"])  # auto, on, off
COMPUTE = ("float32", "native")
METRIC = "max |logit diff|"
# --tolerance auto: max |logit diff| <= factor x max(1, max |source logit|), by compute dtype
TOLERANCE_FACTORS = {"float32": 1e-5, "bfloat16": 2.0**-3, "float16": 2.0**-6}
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
RUNTIME_BYTES = 1 << 30  # torch + megatron-core + transformers, imported


def tolerance_for(compute: str, scale: float) -> float:
    """The auto tolerance on max |logit diff| for logits of magnitude ``scale``."""
    if compute not in TOLERANCE_FACTORS:
        raise UserError(
            f"no parity tolerance for dtype {compute!r}; give --tolerance", field="dtype"
        )
    return TOLERANCE_FACTORS[compute] * max(1.0, float(scale))


def tolerance_rule(compute: str) -> str:
    return f"{TOLERANCE_FACTORS[compute]:.3g} x max(1, max|source logit|)"


def parameter_count(a: ModelArgs) -> int:
    """Parameters of the megatron model (padded vocabulary; HF's is at most this)."""
    qkv_rows = (a.num_attention_heads + 2 * a.num_query_groups) * a.kv_channels
    layer = (
        qkv_rows * a.hidden_size
        + (qkv_rows if a.add_qkv_bias else 0)
        + a.hidden_size * a.num_attention_heads * a.kv_channels
        + 3 * a.ffn_hidden_size * a.hidden_size
        + 2 * a.hidden_size
    )
    vocab = a.padded_vocab_size * a.hidden_size
    return a.num_layers * layer + vocab * (1 if a.tie_word_embeddings else 2) + a.hidden_size


def memory_needed(
    desc: ModelDescription, compute: str, num_sequences: int, seq_length: int
) -> dict[str, int]:
    """Bytes the gate needs: twice the parameters in ``compute`` dtype (loading), the runtime,
    the logits (the kept source's, the other's, their difference, the padded output)."""
    params = parameter_count(desc.args) * ITEMSIZE[compute]
    logits = num_sequences * seq_length * desc.args.padded_vocab_size * 4
    return {"parameter_bytes": params, "needed_bytes": 2 * params + RUNTIME_BYTES + 4 * logits}


def available_bytes(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """MemAvailable in bytes, or None where the kernel does not say."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                parts = line.split()
                return int(parts[1]) * (1024 if parts[2:] == ["kB"] else 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def weights_dtype(checkpoint: str, hf: str) -> str:
    """The dtype both sides' weights are compared in: the lower precision of the two (a
    conversion with ``--dtype`` rounds; the other side is rounded the same way)."""
    if checkpoint == hf or hf == "float32" or hf not in ITEMSIZE:
        return checkpoint
    return hf if checkpoint == "float32" else checkpoint


def gate(
    hf: str | Path,
    mcore: str | Path,
    direction: str,
    *,
    mode: str = "auto",
    tolerance: float | None = None,
    compute_dtype: str = "float32",
    num_sequences: int = 4,
    seq_length: int = 32,
    seed: int = 0,
    threads: int = 0,
    subject: str | None = None,
    say: Any = None,
):
    """The parity verdict (pass, fail or skipped); UserError for inputs that do not load."""
    from llmbuild.gates.verdict import Verdict, judge

    if direction not in DIRECTIONS:
        raise UserError(f"{direction!r}; use one of {', '.join(DIRECTIONS)}", field="--direction")
    if mode not in MODES:
        raise UserError(f"{mode!r}; use one of {', '.join(MODES)}", field="--mode")
    if compute_dtype not in COMPUTE:
        raise UserError(
            f"{compute_dtype!r}; use one of {', '.join(COMPUTE)}", field="--compute-dtype"
        )
    for flag, v in (("--num-sequences", num_sequences), ("--seq-length", seq_length)):
        if v < 1:
            raise UserError(f"must be >= 1, got {v}", field=flag)
    if threads < 0:
        raise UserError(f"must be >= 0, got {threads}", field="--threads")
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):
        raise UserError(f"must be a positive number or auto, got {tolerance}", field="--tolerance")
    say = say or (lambda line: None)
    subject = subject or subject_of(mcore, direction)

    def skipped(detail: str, **figures: Any) -> Verdict:
        return Verdict("parity", subject, "skipped", METRIC, None, tolerance, detail, figures)

    if mode == "off":
        return skipped("parity gate off (--mode off)")
    inp = check_inputs(hf, mcore)
    desc = inp.desc
    if seq_length > desc.args.max_position_embeddings:
        raise UserError(
            f"{seq_length} > the model's max_position_embeddings "
            f"{desc.args.max_position_embeddings}",
            field="--seq-length",
        )
    weights = weights_dtype(desc.dtype, inp.hf_dtype)
    compute = "float32" if compute_dtype == "float32" else weights
    mem = memory_needed(desc, compute, num_sequences, seq_length)
    avail = available_bytes()
    if mode == "auto" and avail is not None and mem["needed_bytes"] > avail:
        return skipped(
            f"auto: the model needs {_gib(mem['needed_bytes'])} (2 x "
            f"{_gib(mem['parameter_bytes'])} of {compute} parameters + runtime) but "
            f"MemAvailable is {_gib(avail)}; --mode on forces it",
            dtype=desc.dtype,
            compute_dtype=compute,
            available_bytes=avail,
            **mem,
        )

    import torch

    if threads:
        torch.set_num_threads(threads)
    ids = token_ids(desc.args.vocab_size, num_sequences, seq_length, seed)
    times: dict[str, float] = {}

    def run_mcore():
        t = time.perf_counter()
        out = megatron_logits(mcore, desc, ids, seed, compute=compute, weights=weights)
        times["mcore_seconds"] = round(time.perf_counter() - t, 3)
        say(f"megatron-core ({desc.dtype} checkpoint, {compute}): {times['mcore_seconds']:.2f}s")
        return out

    def run_hf():
        t = time.perf_counter()
        out = hf_logits(hf, ids, weights=weights, compute=compute, stored=inp.hf_dtype)
        times["hf_seconds"] = round(time.perf_counter() - t, 3)
        say(f"transformers ({inp.hf_dtype} safetensors, {compute}): {times['hf_seconds']:.2f}s")
        return out

    if direction == "hf2mg":
        src_name, other_name = "HF", "megatron-core"
        source = run_hf()
        other = run_mcore()
    else:
        src_name, other_name = "megatron-core", "HF"
        source = run_mcore()
        other = run_hf()
    diff_t = (source - other).abs()
    diff = float(diff_t.max())
    mean = float(diff_t.mean())
    scale = float(source.abs().max())
    argmax_agree = float((source.argmax(-1) == other.argmax(-1)).float().mean())
    del diff_t, other, source
    auto = tolerance is None
    tol = tolerance_for(compute, scale) if auto else float(tolerance)
    finite = math.isfinite(diff) and math.isfinite(scale)
    ok = finite and diff <= tol
    tokens = f"{num_sequences}x{seq_length} tokens ({compute})"
    if not finite:
        detail = (
            f"non-finite logits ({src_name} max |logit| {scale:.4g}, {other_name}'s diff "
            f"{diff:.4g}): a weight is nan/inf"
        )
    elif ok:
        detail = f"{other_name} matches {src_name} on {tokens}"
    else:
        detail = (
            f"{other_name} differs from {src_name} on {tokens}, mean |diff| {mean:.3g}, argmax "
            f"agrees on {argmax_agree:.0%}: "
            + (
                "the converted checkpoint is not the HF model"
                if direction == "hf2mg"
                else "the reconverted HF model is not the checkpoint"
            )
        )
    figures = {
        "dtype": desc.dtype,
        "hf_dtype": inp.hf_dtype,
        "weights_dtype": weights,
        "compute_dtype": compute,
        "sequences": num_sequences,
        "seq_length": seq_length,
        "mean_abs_diff": mean,
        "logits_max_abs": scale,
        "argmax_agreement": argmax_agree,
        "tolerance_rule": tolerance_rule(compute) if auto else "--tolerance",
        "vocab_size": desc.args.vocab_size,
        "architecture": inp.hf_architecture,
        "saved_tp": desc.tp,
        "saved_pp": desc.pp,
        "iteration": inp.iteration,
        "seed": seed,
        "threads": torch.get_num_threads(),
        **times,
        **mem,
        "available_bytes": avail,
    }
    return Verdict("parity", subject, judge(ok), METRIC, diff, tol, detail, figures)
