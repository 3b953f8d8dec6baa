"""Megatron-core setup for a training run: the inputs checked, GPTModel + DDP + the plain
Megatron optimizer and its cosine schedule, the batch source, one micro-batch's forward step
and loss, and the collective checkpoint save. torch and megatron are imported inside the
functions that need them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError
from llmbuild.mcore import checkpoint as ckpt
from llmbuild.mcore import model as M
from llmbuild.train import data as D
from llmbuild.train.resume import TrainArgs, prune


def rank() -> int:
    import torch

    d = torch.distributed
    return d.get_rank() if d.is_initialized() else 0


def check_inputs(a: TrainArgs) -> tuple[D.DataMeta, M.ModelDescription]:
    """The shards' and the checkpoint's descriptions, checked against each other and ``a``."""
    meta = D.read_meta(a.data)
    if meta.kind != a.mode:
        raise UserError(
            f"a {meta.kind} dataset given to --mode {a.mode}", path=a.data, field="kind"
        )
    desc = M.load_description(a.input)
    ckpt.latest_dir(a.input)
    if meta.vocab_size > desc.args.vocab_size:
        raise UserError(
            f"tokenizer vocabulary {meta.vocab_size} > model vocabulary {desc.args.vocab_size}",
            path=Path(a.data) / "meta.json",
            field="vocab_size",
        )
    if a.seq_length > desc.args.max_position_embeddings:
        raise UserError(
            f"{a.seq_length} > the model's max_position_embeddings "
            f"{desc.args.max_position_embeddings}",
            field="--seq-length",
        )
    if a.device == "cpu" and desc.dtype != "float32":
        raise UserError(
            f"the checkpoint is {desc.dtype}; CPU training needs float32 "
            "(convert with `llmbuild convert hf2mg --dtype float32`)",
            path=a.input,
            field="dtype",
        )
    desc.args.check_parallel(a.tp, a.pp, a.pp_layers)
    return meta, desc


@dataclass
class Trainer:
    """This rank's model (wrapped in DDP), optimizer and schedule."""

    ddp: Any
    optimizer: Any
    scheduler: Any
    num_micro: int  # micro-batches per step on this data-parallel rank
    forward_step: Callable[..., Any]  # megatron's forward_step_func for this mode
    metrics: tuple[str, ...] = ()  # reported beside the loss, one mean per step


DPO_METRICS = ("reward_margin", "reward_accuracy")


def build(
    a: TrainArgs,
    desc: M.ModelDescription,
    backend: Any,
    adapt: Callable[[Any], None] | None = None,
) -> Trainer:
    """The model, optimizer and schedule of this rank (after ``device.init_backend``).

    ``adapt(model)`` runs before the model is wrapped in DDP (LoRA: load the base weights,
    freeze them and add the adapters, so that DDP and the optimizer see only the adapters)."""
    from megatron.core.distributed import DistributedDataParallel as DDP
    from megatron.core.distributed import DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    dp = backend.dp
    if a.global_batch_size % (a.micro_batch_size * dp):
        raise UserError(
            f"{a.global_batch_size} is not a multiple of micro batch "
            f"{a.micro_batch_size} x data-parallel size {dp}",
            field="--global-batch-size",
        )
    config, model = M.build_for_this_rank(
        desc,
        tp=a.tp,
        pp=a.pp,
        device=a.device,
        pp_layers=a.pp_layers,
        calculate_per_token_loss=True,
    )
    model.to(backend.torch_device)
    if adapt is not None:
        adapt(model)
    ddp = DDP(
        config,
        DistributedDataParallelConfig(use_distributed_optimizer=False, grad_reduce_in_fp32=True),
        model,
    )
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = ddp.no_sync
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=a.lr,
            min_lr=a.min_lr,
            weight_decay=a.weight_decay,
            adam_beta1=a.adam_beta1,
            adam_beta2=a.adam_beta2,
            adam_eps=a.adam_eps,
            clip_grad=a.clip_grad,
            use_distributed_optimizer=False,
            bf16=desc.dtype == "bfloat16",
            fp16=desc.dtype == "float16",
        ),
        [ddp],
    )
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=a.lr,
        min_lr=a.min_lr,
        lr_warmup_steps=a.warmup_iters,
        lr_decay_steps=a.train_iters,
        lr_decay_style="cosine",
        start_wd=a.weight_decay,
        end_wd=a.weight_decay,
        wd_incr_steps=a.train_iters,
        wd_incr_style="constant",
    )
    num_micro = a.global_batch_size // (a.micro_batch_size * dp)
    step = partial(forward_step, backend.torch_device)
    if a.mode != "dpo":
        return Trainer(ddp, optimizer, scheduler, num_micro, step)
    # DPO: the reference is the starting checkpoint, frozen, beside the policy
    _, ref = M.build_for_this_rank(desc, tp=a.tp, pp=a.pp, device=a.device, pp_layers=a.pp_layers)
    ref.to(backend.torch_device)
    ckpt.load(a.input, ref)
    ref.eval()
    ref.requires_grad_(False)
    step = partial(dpo_forward_step, backend.torch_device, ref, a.beta)
    return Trainer(ddp, optimizer, scheduler, num_micro, step, DPO_METRICS)


def batch_source(a: TrainArgs, meta: D.DataMeta, work: Path, say: Callable[[str], None]) -> Any:
    """The deterministic batch source of the run's mode (see train/data.py)."""
    if a.mode == "pretrain":
        return D.PretrainSource(
            meta,
            seq_length=a.seq_length,
            seed=a.seed,
            num_samples=a.train_iters * a.global_batch_size,
            cache_dir=work / "data_cache",
        )
    if a.mode == "dpo":
        source: Any = D.DpoSource(meta, seq_length=a.seq_length, seed=a.seed)
    else:
        source = D.SftSource(meta, seq_length=a.seq_length, seed=a.seed)
    if source.truncated:
        say(f"warning: {source.truncated} examples are longer than seq_length+1 and are truncated")
    return source


def loss_func(loss_mask: Any, output_tensor: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Megatron's per-token loss contract: (sum of losses, token count, report)."""
    import torch

    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.reshape(-1).float()
    loss = torch.sum(losses * mask)
    n = mask.sum().to(torch.int)
    report = torch.stack([loss.detach(), mask.sum().detach()])
    return loss, n, {"lm loss": report}


def forward_step(device: Any, data_iterator: Any, model: Any) -> tuple[Any, Any]:
    """One micro-batch through ``model`` (megatron's forward_step_func, device bound)."""
    b = next(data_iterator)
    tokens, position_ids, mask = _inputs(device, b)
    out = model(tokens, position_ids, mask, labels=b["labels"].to(device))
    return out, partial(loss_func, b["loss_mask"].to(device))


def _inputs(device: Any, b: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(tokens, position ids, attention mask) of a batch on ``device``."""
    import torch

    tokens = b["tokens"].to(device)
    bsz, seq = tokens.shape
    position_ids = torch.arange(seq, device=device).unsqueeze(0).expand(bsz, -1)
    if b["segments"] is None:
        mask = M.causal_attention_mask(seq, device)
    else:
        mask = D.packed_attention_mask(b["segments"]).to(device)
    return tokens, position_ids, mask


def dpo_loss(
    policy_nll: Any, ref_nll: Any, loss_mask: Any, beta: float
) -> tuple[Any, Any, dict[str, Any]]:
    """The DPO sigmoid loss (Rafailov et al. 2023) of a batch whose first half holds the
    chosen answers and second half the rejected ones, from per-token negative
    log-likelihoods [2n, s]: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), summed
    over the n pairs (megatron divides by the pair count it is told), with the implicit reward
    margin and how often it is positive."""
    import torch
    import torch.nn.functional as F

    mask = loss_mask.float()
    logp = -(policy_nll.float() * mask).sum(-1)
    ref = -(ref_nll.float() * mask).sum(-1)
    n = logp.shape[0] // 2
    margin = beta * ((logp[:n] - ref[:n]) - (logp[n:] - ref[n:]))
    loss = -F.logsigmoid(margin).sum()
    count = torch.tensor(float(n), device=loss.device)
    report = {
        "lm loss": torch.stack([loss.detach(), count]),
        "reward_margin": torch.stack([margin.detach().sum(), count]),
        "reward_accuracy": torch.stack([(margin.detach() > 0).float().sum(), count]),
    }
    return loss, count.to(torch.int), report


def dpo_forward_step(
    device: Any, ref: Any, beta: float, data_iterator: Any, model: Any
) -> tuple[Any, Any]:
    """One micro-batch of pairs through the policy, and through the frozen reference."""
    import torch

    b = next(data_iterator)
    tokens, position_ids, mask = _inputs(device, b)
    labels = b["labels"].to(device)
    out = model(tokens, position_ids, mask, labels=labels)
    with torch.no_grad():
        ref_out = ref(tokens, position_ids, mask, labels=labels)
    return out, partial(lambda r, m, o: dpo_loss(o, r, m, beta), ref_out, b["loss_mask"].to(device))


def save(
    work: Path, step: int, t: Trainer, tokens: int, elapsed: float, *, final: bool = False
) -> None:
    """Checkpoint ``step`` into ``work`` (collective), then keep only it. ``final``: the
    weights alone (nothing resumes from the last step)."""
    # The common state must be the same on every rank (megatron warns otherwise); each rank
    # has its own clock, so the time is rank 0's.
    elapsed = from_rank0(elapsed)
    ckpt.save(
        work,
        step,
        t.ddp.module,
        optimizer=None if final else t.optimizer,
        scheduler=None if final else t.scheduler,
        # the final checkpoint keeps no wall time: the same run writes the same bytes
        common={"llmbuild": {"tokens": tokens, **({} if final else {"elapsed": elapsed})}},
    )
    if rank() == 0:
        if final:
            ckpt.make_reproducible(work / ckpt.iter_name(step))
        prune(work, step)


def from_rank0(value: Any) -> Any:
    import torch

    d = torch.distributed
    if not d.is_initialized() or d.get_world_size() == 1:
        return value
    box = [value]
    d.broadcast_object_list(box, src=0)
    return box[0]
