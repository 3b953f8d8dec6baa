"""Tiny synthetic indexed datasets in the `llmbuild data` layout (meta.json + .bin/.idx)."""

from __future__ import annotations

import json
from pathlib import Path

EOD, PAD = 0, 0


def make_pretrain(out: Path, *, docs: int = 200, vocab: int = 64, seed: int = 0) -> Path:
    """Documents of a learnable pattern (counting runs mod ``vocab``), each ending in EOD."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    b = IndexedDatasetBuilder(str(out / "text_document.bin"), dtype=np.int32)
    for _ in range(docs):
        n = int(rng.integers(8, 120))
        start = int(rng.integers(5, vocab))
        body = (start + np.arange(n)) % (vocab - 5) + 5
        doc = np.concatenate([body, [EOD]]).astype(np.int32)
        b.add_document(doc, [len(doc)])
    b.finalize(str(out / "text_document.idx"))
    (out / "meta.json").write_text(
        json.dumps(
            {
                "kind": "pretrain",
                "eod_id": EOD,
                "pad_id": PAD,
                "vocab_size": vocab,
                "prefixes": {"text": "text_document"},
            }
        )
    )
    return out


def make_sft(out: Path, *, examples: int = 100, vocab: int = 64, seed: int = 0) -> Path:
    """Prompt (masked) then answer = the prompt reversed (trained), then end-of-turn."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bi = IndexedDatasetBuilder(str(out / "input_ids_document.bin"), dtype=np.int32)
    bl = IndexedDatasetBuilder(str(out / "labels_document.bin"), dtype=np.int32)
    for _ in range(examples):
        prompt = rng.integers(5, vocab, int(rng.integers(3, 12)))
        answer = prompt[::-1]
        ids = np.concatenate([[1], prompt, [2], answer, [3]]).astype(np.int32)
        labels = ids.copy()
        labels[: len(prompt) + 2] = -100
        bi.add_document(ids, [len(ids)])
        bl.add_document(labels, [len(labels)])
    bi.finalize(str(out / "input_ids_document.idx"))
    bl.finalize(str(out / "labels_document.idx"))
    (out / "meta.json").write_text(
        json.dumps(
            {
                "kind": "sft",
                "eod_id": EOD,
                "pad_id": PAD,
                "vocab_size": vocab,
                "prefixes": {"input_ids": "input_ids_document", "labels": "labels_document"},
            }
        )
    )
    return out
