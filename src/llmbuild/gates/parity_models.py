"""The two models of the parity gate, each on the CPU and freed before the other loads:
megatron-core's GPTModel on the torch_dist checkpoint (built at TP=1/PP=1: it reshards a
checkpoint saved at any TP/PP on load) and the transformers model from safetensors (never
``trust_remote_code``). Each returns fp32 logits sliced to the HF vocabulary; a model that
does not load or run is one UserError line."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbuild.errors import UserError

if TYPE_CHECKING:
    from llmbuild.mcore.model import ModelDescription


def _root_cause(exc: BaseException) -> BaseException:
    """The exception behind torch.distributed.checkpoint's CheckpointException, whose message
    is every rank's traceback (``failures``: rank -> (exception, stack))."""
    for _ in range(8):
        failures = getattr(exc, "failures", None)
        if not isinstance(failures, dict) or not failures:
            break
        first = next(iter(failures.values()))
        inner = first[0] if isinstance(first, tuple) and first else first
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def _one_line(exc: BaseException, limit: int = 300) -> str:
    exc = _root_cause(exc)
    text = " ".join(str(exc).split()) or "(no message)"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def token_ids(vocab_size: int, num_sequences: int, seq_length: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (num_sequences, seq_length), generator=gen)


def megatron_logits(
    mcore: str | Path,
    desc: ModelDescription,
    ids: Any,
    seed: int,
    *,
    compute: str = "float32",
    weights: str | None = None,
) -> Any:
    """fp32 logits [n, s, vocab] of megatron-core's GPTModel on the checkpoint (TP=PP=1), the
    model in ``compute`` dtype; ``weights``: round the loaded weights to this dtype first (the
    HF side holds them in it)."""
    import torch

    from llmbuild.mcore import checkpoint as ckpt
    from llmbuild.mcore import device as dev
    from llmbuild.mcore import model as M

    dev.init_backend("cpu", tp=1, pp=1, seed=seed)
    model = None
    try:
        try:
            _, model = M.build_for_this_rank(desc, tp=1, pp=1, device="cpu", dtype=compute)
            ckpt.load(mcore, model)  # cast to ``compute`` as it loads
        except UserError:
            raise
        except MemoryError as exc:
            raise UserError(
                "out of memory loading the checkpoint; use --mode auto or off", path=mcore
            ) from exc
        except BaseException as exc:  # DCP's CheckpointException is a BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise UserError(
                f"the checkpoint does not load into megatron-core ({_one_line(exc)})",
                path=mcore,
            ) from exc
        model.eval()
        if weights is not None and weights not in (desc.dtype, compute):
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.to(getattr(torch, weights)))
        seq = ids.shape[1]
        pos = torch.arange(seq).unsqueeze(0).expand(ids.shape[0], -1)
        try:
            with torch.no_grad():
                out = model(ids, pos, M.causal_attention_mask(seq))
        except Exception as exc:
            raise UserError(
                f"megatron-core's forward pass failed on the checkpoint ({_one_line(exc)})",
                path=mcore,
            ) from exc
        return out[..., : desc.args.vocab_size].float().contiguous()
    finally:
        del model
        dev.shutdown()
        gc.collect()


def hf_logits(
    hf: str | Path, ids: Any, *, weights: str, compute: str = "float32", stored: str | None = None
) -> Any:
    """fp32 logits [n, s, vocab] of the transformers model (safetensors, no remote code), its
    weights rounded to ``weights`` dtype and run in ``compute``; ``stored``: the dtype of the
    safetensors (when it is ``weights``, they load straight into ``compute``: no rounding)."""
    import torch
    from transformers import AutoModelForCausalLM

    load = compute if stored == weights else weights
    model = None
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(hf),
                dtype=getattr(torch, load),
                use_safetensors=True,
                trust_remote_code=False,
                local_files_only=True,
            )
        except MemoryError as exc:
            raise UserError(
                "out of memory loading the model; use --mode auto or off", path=hf
            ) from exc
        except Exception as exc:
            raise UserError(
                f"transformers cannot load the model ({_one_line(exc)})", path=hf
            ) from exc
        model.eval()
        if compute != load:
            model.to(getattr(torch, compute))
        try:
            with torch.no_grad():
                out = model(input_ids=ids, use_cache=False).logits
        except Exception as exc:
            raise UserError(
                f"the transformers forward pass failed ({_one_line(exc)})", path=hf
            ) from exc
        return out.float().contiguous()
    finally:
        del model
        gc.collect()
