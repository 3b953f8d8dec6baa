"""Preference data for DPO: (prompt, chosen answer, rejected answer) -> Megatron shards.

A record is Alpaca-style with two answers, as LlamaFactory's preference datasets are:
``{"instruction", "input"?, "system"?, "chosen", "rejected"}``. Both answers are rendered
with the chat template after the same prompt and encoded as the instruction handler encodes
a conversation (labels -100 outside the assistant turn), into four indexed datasets with one
document per pair each:

    DIR/chosen_ids_document, chosen_labels_document,
        rejected_ids_document, rejected_labels_document        (int32)
    DIR/meta.json  {"kind": "dpo", "prefixes": {"chosen_ids": ..., ...}, ...}

The synthetic default is made from the instruction task's training split: chosen is the
exact answer, rejected the input copied back (the tiny model's typical mistake).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmbuild.data import formats
from llmbuild.data.handlers import IGNORE_INDEX, Encoder
from llmbuild.data.shards import ShardWriter
from llmbuild.data.specials import SpecialTokens
from llmbuild.errors import UserError

DPO_PREFIXES = {
    "chosen_ids": "chosen_ids_document",
    "chosen_labels": "chosen_labels_document",
    "rejected_ids": "rejected_ids_document",
    "rejected_labels": "rejected_labels_document",
}
Pair = tuple[list[dict[str, str]], str, str]  # (prompt messages, chosen, rejected)


def synth_records(examples: Iterable[Any]) -> Iterator[dict[str, str]]:
    """Preference records from task examples: the answer preferred over the input copied."""
    for ex in examples:
        if ex.output == ex.input:
            continue  # nothing to prefer (an input that is already its own answer)
        yield {
            "instruction": ex.instruction,
            "input": ex.input,
            "chosen": ex.output,
            "rejected": ex.input,
        }


def read_pairs(path: str | Path, tally: formats.Tally | None = None) -> Iterator[Pair]:
    """(prompt messages, chosen, rejected) from a .jsonl/.json preference dataset."""
    path = Path(path)
    for where, rec in formats._records(path, tally):
        chosen = formats._field(rec, "chosen", path, where)
        rejected = formats._field(rec, "rejected", path, where)
        if chosen == rejected:
            raise UserError(
                "chosen and rejected are the same answer; drop the record or fix it",
                path=f"{path}:{where}",
                field="rejected",
            )
        msgs = formats.alpaca_messages({**rec, "output": chosen}, path, where)
        yield msgs[:-1], chosen, rejected


def tokenize_pairs(
    pairs: Iterable[Pair],
    tokenizer_dir: str,
    out_dir: Path,
    seq_length: int,
    overlong: str,
    stats: Any,
    specials: SpecialTokens,
    tok: Any,
    progress: Any = None,
) -> None:
    """Both conversations of every pair into the four shards; a pair either side of which is
    longer than ``seq_length`` follows ``overlong`` (drop, truncate or error)."""
    Encoder.init(tokenizer_dir, specials.eod_id, tok)
    writers = {k: ShardWriter(out_dir / v, np.int32) for k, v in DPO_PREFIXES.items()}
    bos = tok.bos_token_id
    try:
        for n, (prompt, chosen, rejected) in enumerate(pairs):
            sides = {}
            for side, answer in (("chosen", chosen), ("rejected", rejected)):
                ids, labels = Encoder.conversation(
                    [*prompt, {"role": "assistant", "content": answer}]
                )
                sides[side] = (np.asarray(ids), np.asarray(labels))
            longest = max(len(ids) for ids, _ in sides.values())
            if longest > seq_length:
                stats.over_seq_length += 1
                if overlong == "error":
                    raise UserError(
                        f"pair {n} has {longest} tokens > seq_length {seq_length}; raise "
                        "train.dpo.seq_length or use data.overlong: drop",
                        field="seq_length",
                    )
                if overlong == "drop":
                    stats.dropped += 1
                    continue
                sides = {k: (i[:seq_length], lab[:seq_length]) for k, (i, lab) in sides.items()}
                stats.truncated += 1
            if any(int((lab != IGNORE_INDEX).sum()) == 0 for _, lab in sides.values()):
                stats.dropped += 1
                continue
            for side, (ids, labels) in sides.items():
                one = np.asarray([len(ids)], dtype=np.int64)
                writers[f"{side}_ids"].add_flat(ids.astype(np.int32), one)
                writers[f"{side}_labels"].add_flat(labels.astype(np.int32), one)
                stats.tokens += len(ids)
                stats.trained_tokens += int((labels != IGNORE_INDEX).sum())
                stats.max_length = max(stats.max_length, len(ids))
            stats.documents += 1
            stats.bos_documents += bos is not None and int(sides["chosen"][0][0]) == bos
            if progress:
                progress(stats.documents, stats.tokens)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for w in writers.values():
        w.finalize()
