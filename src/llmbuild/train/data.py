"""Training batches from the tokenized shard directory (the contract with `llmbuild data`).

    DIR/meta.json  {"kind": "pretrain"|"sft"|"dpo", "eod_id", "pad_id", "vocab_size",
                    "prefixes": {"text": "text_document"}                         (pretrain)
                                {"input_ids": "...", "labels": "..."}             (sft)
                                {"chosen_ids", "chosen_labels", "rejected_ids",
                                 "rejected_labels"}}                              (dpo)

Every source is a deterministic function of (data, seed, seq_length): sample ``i`` is always
the same rows, so resuming at step ``s`` continues at sample ``s * global_batch_size``.

A batch is a dict of CPU tensors [b, s]: ``tokens``, ``labels`` (target of each position,
already shifted), ``loss_mask`` (1.0 where trained), and ``segments`` (sft packing: which
example each position belongs to, 0 = padding) or None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError

IGNORE_INDEX = -100
KINDS = ("pretrain", "sft", "dpo")
PREFIX_KEYS = {
    "pretrain": ("text",),
    "sft": ("input_ids", "labels"),
    "dpo": ("chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels"),
}


@dataclass(frozen=True)
class DataMeta:
    dir: Path
    kind: str
    eod_id: int
    pad_id: int
    vocab_size: int
    prefixes: dict[str, str]

    def prefix(self, name: str) -> str:
        return str(self.dir / self.prefixes[name])


def read_meta(data_dir: str | Path) -> DataMeta:
    d = Path(data_dir)
    path = d / "meta.json"
    if not path.is_file():
        raise UserError(
            "no meta.json: not a tokenized shard directory (make it with `llmbuild data tokenize`)",
            path=d,
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"invalid JSON ({exc})", path=path) from exc
    kind = raw.get("kind")
    if kind not in KINDS:
        raise UserError(f"kind {kind!r}; expected one of {KINDS}", path=path, field="kind")
    for key in ("eod_id", "pad_id", "vocab_size", "prefixes"):
        if key not in raw:
            raise UserError("missing", path=path, field=key)
    prefixes = raw["prefixes"]
    for key in PREFIX_KEYS[kind]:
        if key not in prefixes:
            raise UserError(f"missing prefix {key!r} for kind {kind}", path=path, field="prefixes")
        for ext in (".bin", ".idx"):
            if not (d / (prefixes[key] + ext)).is_file():
                raise UserError(
                    f"missing shard file {prefixes[key] + ext}", path=d, field=f"prefixes.{key}"
                )
    return DataMeta(
        dir=d,
        kind=kind,
        eod_id=int(raw["eod_id"]),
        pad_id=int(raw["pad_id"]),
        vocab_size=int(raw["vocab_size"]),
        prefixes=dict(prefixes),
    )


# --------------------------------------------------------------------------- pretrain


class _EodOnlyTokenizer:
    """What GPTDataset reads of a tokenizer: the EOD id (no pad: EOD targets are trained)."""

    def __init__(self, eod: int, vocab_size: int) -> None:
        self.eod = eod
        self.vocab_size = vocab_size
        self.unique_identifiers = {"class": "llmbuild-eod-only", "eod": eod}


class PretrainSource:
    """megatron.core's GPTDataset over the EOD-joined stream: seq_length+1 windows, document
    order and sample order shuffled with the seed (its C++ index helpers ship in the wheel)."""

    def __init__(
        self, meta: DataMeta, *, seq_length: int, seed: int, num_samples: int, cache_dir: Path
    ) -> None:
        from megatron.core.datasets.blended_megatron_dataset_builder import (
            BlendedMegatronDatasetBuilder,
        )
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

        cache_dir.mkdir(parents=True, exist_ok=True)
        config = GPTDatasetConfig(
            random_seed=seed,
            sequence_length=seq_length,
            blend=([meta.prefix("text")], None),
            split="100,0,0",
            path_to_cache=str(cache_dir),
            tokenizer=_EodOnlyTokenizer(meta.eod_id, meta.vocab_size),
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
            create_attention_mask=False,
        )
        train, _, _ = BlendedMegatronDatasetBuilder(
            GPTDataset, [num_samples, None, None], lambda: True, config
        ).build()
        if train is None or len(train) == 0:
            raise UserError("no training samples (is the dataset empty?)", path=meta.dir)
        self.dataset = train
        self.seq_length = seq_length

    def batch(self, start: int, size: int) -> dict[str, Any]:
        import torch

        rows = [self.dataset[(start + i) % len(self.dataset)] for i in range(size)]
        return {
            "tokens": torch.stack([r["tokens"] for r in rows]),
            "labels": torch.stack([r["labels"] for r in rows]),
            "loss_mask": torch.stack([r["loss_mask"] for r in rows]),
            "segments": None,
        }


# --------------------------------------------------------------------------- sft


def pack_rows(lengths: list[int], order: list[int], seq_length: int) -> list[list[int]]:
    """Greedy first-fit-in-order packing of examples (by index, in ``order``) into rows of
    ``seq_length`` positions; an example of n tokens takes n - 1 positions (inputs shifted
    against labels). Pure."""
    rows: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in order:
        need = min(lengths[i], seq_length + 1) - 1
        if need <= 0:
            continue
        if cur and used + need > seq_length:
            rows.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += need
    if cur:
        rows.append(cur)
    return rows


def build_sft_row(
    examples: list[tuple[list[int], list[int]]],
    seq_length: int,
    pad_id: int,
) -> tuple[list[int], list[int], list[float], list[int]]:
    """One packed row: (tokens, targets, loss mask, segment ids) of length ``seq_length``.

    Each example (ids, labels) contributes inputs ids[:-1] and targets labels[1:] (position
    i predicts labels[i+1]); targets of -100 are masked; the tail is padding (segment 0).
    Pure.
    """
    tokens: list[int] = []
    targets: list[int] = []
    mask: list[float] = []
    segs: list[int] = []
    for seg, (ids, labels) in enumerate(examples, start=1):
        ids, labels = ids[: seq_length + 1], labels[: seq_length + 1]
        tgt = labels[1:]
        tokens += ids[:-1]
        targets += [t if t != IGNORE_INDEX else 0 for t in tgt]
        mask += [0.0 if t == IGNORE_INDEX else 1.0 for t in tgt]
        segs += [seg] * len(tgt)
    if len(tokens) > seq_length:
        raise ValueError(f"packed row of {len(tokens)} > seq_length {seq_length}")
    pad = seq_length - len(tokens)
    return (tokens + [pad_id] * pad, targets + [0] * pad, mask + [0.0] * pad, segs + [0] * pad)


class SftSource:
    """Examples packed into seq_length rows, re-shuffled each epoch with the seed. Packed
    examples never attend to one another (block-diagonal causal mask from ``segments``)."""

    def __init__(self, meta: DataMeta, *, seq_length: int, seed: int) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.ids = IndexedDataset(meta.prefix("input_ids"))
        self.labels = IndexedDataset(meta.prefix("labels"))
        if len(self.ids) != len(self.labels):
            raise UserError(
                f"{len(self.ids)} input_ids documents but {len(self.labels)} labels documents",
                path=meta.dir,
                field="prefixes",
            )
        self.lengths = [int(n) for n in self.ids.sequence_lengths]
        if list(self.labels.sequence_lengths) != self.lengths:
            raise UserError(
                "input_ids and labels documents differ in length", path=meta.dir, field="prefixes"
            )
        if not any(n > 1 for n in self.lengths):
            raise UserError("no example with at least 2 tokens", path=meta.dir)
        self.seq_length, self.seed, self.pad_id = seq_length, seed, meta.pad_id
        self._rows: tuple[int, list[list[int]]] | None = None  # (epoch, its rows)
        self._counts: list[int] = []  # rows per epoch, for the epochs seen so far
        self.truncated = sum(n > seq_length + 1 for n in self.lengths)

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        import numpy as np

        if self._rows is None or self._rows[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.lengths))
            self._rows = (epoch, pack_rows(self.lengths, order.tolist(), self.seq_length))
        return self._rows[1]

    def _locate(self, sample: int) -> list[int]:
        epoch = 0
        while True:
            if epoch == len(self._counts):
                self._counts.append(len(self.epoch_rows(epoch)))
            if sample < self._counts[epoch]:
                return self.epoch_rows(epoch)[sample]
            sample -= self._counts[epoch]
            epoch += 1

    def row(self, sample: int) -> tuple[list[int], list[int], list[float], list[int]]:
        examples = [(self.ids[i].tolist(), self.labels[i].tolist()) for i in self._locate(sample)]
        return build_sft_row(examples, self.seq_length, self.pad_id)

    def batch(self, start: int, size: int) -> dict[str, Any]:
        import torch

        rows = [self.row(start + i) for i in range(size)]
        return {
            "tokens": torch.tensor([r[0] for r in rows], dtype=torch.long),
            "labels": torch.tensor([r[1] for r in rows], dtype=torch.long),
            "loss_mask": torch.tensor([r[2] for r in rows], dtype=torch.float32),
            "segments": torch.tensor([r[3] for r in rows], dtype=torch.long),
        }


# --------------------------------------------------------------------------- dpo


class DpoSource:
    """Preference pairs, one per row (no packing: each side's log-probability is summed over
    its own row), in an order re-shuffled each epoch with the seed. A batch of ``size`` pairs
    has 2 * size rows: the chosen answers, then the rejected ones in the same order."""

    def __init__(self, meta: DataMeta, *, seq_length: int, seed: int) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.sides = {k: IndexedDataset(meta.prefix(k)) for k in PREFIX_KEYS["dpo"]}
        counts = {len(d) for d in self.sides.values()}
        if len(counts) != 1 or not counts.pop():
            raise UserError(
                "the four preference shards must hold the same number (> 0) of pairs",
                path=meta.dir,
                field="prefixes",
            )
        self.n = len(self.sides["chosen_ids"])
        self._order: tuple[int, Any] | None = None  # (epoch, its permutation of the pairs)
        self.seq_length, self.seed, self.pad_id = seq_length, seed, meta.pad_id
        self.truncated = sum(
            int(n) > seq_length + 1
            for side in ("chosen_ids", "rejected_ids")
            for n in self.sides[side].sequence_lengths
        )

    def pair(self, sample: int) -> int:
        import numpy as np

        epoch, i = divmod(sample, self.n)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return int(self._order[1][i])

    def batch(self, start: int, size: int) -> dict[str, Any]:
        import torch

        pairs = [self.pair(start + i) for i in range(size)]
        rows = [
            build_sft_row(
                [(self.sides[f"{side}_ids"][j].tolist(), self.sides[f"{side}_labels"][j].tolist())],
                self.seq_length,
                self.pad_id,
            )
            for side in ("chosen", "rejected")
            for j in pairs
        ]
        return {
            "tokens": torch.tensor([r[0] for r in rows], dtype=torch.long),
            "labels": torch.tensor([r[1] for r in rows], dtype=torch.long),
            "loss_mask": torch.tensor([r[2] for r in rows], dtype=torch.float32),
            "segments": torch.tensor([r[3] for r in rows], dtype=torch.long),
        }


def packed_attention_mask(segments: Any) -> Any:
    """[b, 1, s, s] bool, True = masked: causal and only within the same segment."""
    import torch

    s = segments.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return ~(causal[None] & same)[:, None]
