"""The batched tokenization path: Megatron's bytes, Megatron's dtype, bounded memory, progress.

Byte-identity is checked against megatron.core's own IndexedDatasetBuilder fed with the HF
tokenizer's ids plus the EOD, which is what Megatron-LM's tools/preprocess_data.py writes
(``--append-eod``, one sequence per document, ``DType.optimal_dtype(len(tokenizer))``). The
peer's tool itself is run too when a Megatron-LM checkout is named by ``$MEGATRON_LM`` and
imports (it needs ``six`` and ``triton``: benchmarks/tokenize_vs_megatron.py says how); CI has
no checkout, so there that test skips and the builder comparison stands for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("megatron.core")
pytest.importorskip("transformers")

from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder  # noqa: E402

from llmbuild.data import batched, shards  # noqa: E402
from llmbuild.data import tokenize as tk  # noqa: E402
from llmbuild.data.formats import Tally, read_pretrain  # noqa: E402
from llmbuild.data.handlers import Encoder  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import families  # noqa: E402

pytestmark = pytest.mark.unit


def _docs(n: int, seed: int = 0) -> list[str]:
    from llmbuild.data.synth import corpus_documents

    docs = list(corpus_documents(n, seed))
    # unicode, whitespace runs and a special token's text inside a document
    return docs + ["Zahl 12345, ünïcödé ✓ 日本語", "  two\n\nlines\t", "an <|end|> inside", "x"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from llmbuild.data.synth import corpus_documents
    from llmbuild.model.tiny import save_tokenizer, train_tokenizer

    d = tmp_path_factory.mktemp("tiny")
    save_tokenizer(train_tokenizer(corpus_documents(200, 0), 512), d, 512)
    return d


def _reference(docs: list[str], tok, eod: int, prefix: Path) -> None:
    """What the peer writes: tok(text) ids + EOD per document, megatron.core's builder."""
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=DType.optimal_dtype(len(tok)))
    for text in docs:
        ids = tok(text)["input_ids"] + [eod]
        builder.add_document(ids, [len(ids)])
    builder.finalize(str(prefix) + ".idx")


def _same_bytes(a: Path, b: Path) -> bool:
    return all(
        Path(f"{a}{ext}").read_bytes() == Path(f"{b}{ext}").read_bytes() for ext in (".bin", ".idx")
    )


def test_dtype_codes_and_choice_are_megatrons():
    for dtype, code in shards.DTYPE_CODES.items():
        assert DType.code_from_dtype(dtype.type) == code
    for size in (0, 512, 32000, 65499, 65500, 128256, 151665):
        assert shards.optimal_dtype(size) is DType.optimal_dtype(size)


def test_pretrain_bytes_equal_megatron_builder_uint16(tiny, tmp_path):
    tok = tk.load_tokenizer(tiny)
    docs = _docs(300)
    (tmp_path / "ours").mkdir()
    stats = tk.tokenize_pretrain(docs, str(tiny), tmp_path / "ours", 64, workers=2, tok=tok)
    _reference(docs, tok, tok.eos_token_id, tmp_path / "ref")
    assert _same_bytes(tmp_path / "ours" / "text_document", tmp_path / "ref")
    assert (tmp_path / "ours" / "text_document.idx").read_bytes()[17] == 8  # uint16's code
    assert stats.documents == len(docs)
    assert not list((tmp_path / "ours").glob("*.tmp"))


def test_large_vocabulary_is_int32_and_equal(tmp_path):
    d = families.build_tokenizer("llama3", tmp_path / "llama3")  # BOS from the post-processor
    tok = tk.load_tokenizer(d)
    assert len(tok) >= 65500
    docs = _docs(60)
    (tmp_path / "ours").mkdir()
    specials = tk.resolve_special_tokens(d, tok=tok)
    stats = tk.tokenize_pretrain(docs, str(d), tmp_path / "ours", 64, specials=specials, tok=tok)
    _reference(docs, tok, specials.eod_id, tmp_path / "ref")
    assert _same_bytes(tmp_path / "ours" / "text_document", tmp_path / "ref")
    assert (tmp_path / "ours" / "text_document.idx").read_bytes()[17] == 4  # int32's code
    assert stats.bos_documents == len(docs)


def test_sft_batched_equals_per_conversation(tiny):
    tok = tk.load_tokenizer(tiny)
    convs = [
        [{"role": "user", "content": f"Say {d[:40]}"}, {"role": "assistant", "content": d[:200]}]
        for d in _docs(40)
    ]
    convs.append(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d ✓"},
        ]
    )
    got = [pair for block in tk._sft_batches(convs, str(tiny), tok, 4, 2) for pair in block]
    Encoder.init(str(tiny), 4, tok)
    for (ids, labels), conv in zip(got, convs, strict=True):
        want_ids, want_labels = Encoder.conversation(conv)
        assert ids.tolist() == want_ids and labels.tolist() == want_labels


def test_without_a_fast_backend_the_per_document_path_writes_the_same(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(batched, "fast_backend", lambda *a, **k: None)
    tok = tk.load_tokenizer(tiny)
    docs = _docs(50)
    (tmp_path / "ours").mkdir()
    tk.tokenize_pretrain(docs, str(tiny), tmp_path / "ours", 64, tok=tok)
    _reference(docs, tok, tok.eos_token_id, tmp_path / "ref")
    assert _same_bytes(tmp_path / "ours" / "text_document", tmp_path / "ref")
    conv = [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "A B"}]
    (ids, labels), *_ = [
        p for block in tk._sft_batches([conv], str(tiny), tok, 4, 1) for p in block
    ]
    assert (ids.tolist(), labels.tolist()) == Encoder.conversation(conv)


def test_memory_is_bounded_by_the_batch_not_the_corpus(tiny, tmp_path, monkeypatch):
    """Python's peak for 3 MB and for 12 MB of text (made as it is read) is the same few
    batches (64 kB of text each here), far below the corpus."""
    monkeypatch.setattr(batched, "BATCH_CHARS", 1 << 16)
    doc = " ".join(_docs(20)) + " "
    tok = tk.load_tokenizer(tiny)

    def peak(megabytes: int) -> int:
        n = (megabytes << 20) // len(doc)
        out = tmp_path / str(megabytes)
        out.mkdir()
        tracemalloc.start()
        docs = (f"{i} {doc}" for i in range(n))
        stats = tk.tokenize_pretrain(docs, str(tiny), out, 64, workers=2, tok=tok)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert stats.documents == n
        return peak

    small, large = peak(3), peak(12)
    assert large < 1.3 * small + (1 << 20), (small, large)
    assert large < 6 << 20, f"peak {large / 2**20:.1f} MiB of Python memory for 12 MB of text"


def test_parquet_is_read_in_batches(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = [f"document {i}" for i in range(3000)] + [""]
    pq.write_table(pa.table({"text": texts, "n": list(range(3001))}), tmp_path / "c.parquet")
    tally = Tally()
    seen = []
    for text in read_pretrain(tmp_path / "c.parquet", tally=tally):
        seen.append((text, tally.done))
    assert [t for t, _ in seen] == texts[:-1]
    assert seen[0][1] < 3001 and tally.fraction == 1.0  # not the whole table at once


def test_progress_line_has_rate_and_eta(tiny, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs(50)))
    proc = subprocess.run(
        [sys.executable, "-m", "llmbuild", "data", "tokenize", "--kind", "pretrain"]
        + ["--input", str(corpus), "--tokenizer", str(tiny), "--output", str(tmp_path / "o")]
        + ["--seq-length", "64", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [x for x in proc.stderr.splitlines() if x.startswith("tokenize pretrain:")][-1]
    assert "tokens/s" in line and "100.0% of the input, ETA 0s" in line, line


def _peer_tool() -> Path | None:
    root = os.environ.get("MEGATRON_LM")
    tool = Path(root) / "tools" / "preprocess_data.py" if root else None
    return tool if tool is not None and tool.is_file() else None


@pytest.mark.skipif(_peer_tool() is None, reason="no Megatron-LM checkout in $MEGATRON_LM")
def test_bytes_equal_the_peer_tool(tiny, tmp_path):
    corpus = tmp_path / "c.jsonl"
    docs = _docs(200)
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    peer = subprocess.run(
        [sys.executable, str(_peer_tool()), "--input", str(corpus), "--output-prefix"]
        + [str(tmp_path / "p"), "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model"]
        + [str(tiny), "--append-eod", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if peer.returncode and "ModuleNotFoundError" in peer.stderr:
        pytest.skip(f"the peer does not import here: {peer.stderr.strip().splitlines()[-1]}")
    assert peer.returncode == 0, peer.stderr[-2000:]
    tok = tk.load_tokenizer(tiny)
    (tmp_path / "ours").mkdir()
    tk.tokenize_pretrain(docs, str(tiny), tmp_path / "ours", 64, workers=2, tok=tok)
    assert _same_bytes(tmp_path / "ours" / "text_document", tmp_path / "p_text_document")
    assert np.fromfile(tmp_path / "p_text_document.bin", np.uint16).size > 0


def test_uint16_shards_train_as_before(tiny, tmp_path):
    """`llmbuild train`'s reader (megatron.core's GPTDataset) takes the uint16 shards."""
    from llmbuild.train.data import PretrainSource, read_meta

    tok = tk.load_tokenizer(tiny)
    docs = _docs(100)
    out = tmp_path / "shards"
    out.mkdir()
    stats = tk.tokenize_pretrain(docs, str(tiny), out, 32, tok=tok)
    tk.write_meta(out, stats, str(tiny), 32, tok=tok)
    meta = read_meta(out)
    source = PretrainSource(meta, seq_length=32, seed=0, num_samples=8, cache_dir=tmp_path / "c")
    batch = source.batch(0, 4)
    stream = set(np.fromfile(out / "text_document.bin", dtype=np.uint16).tolist())
    assert batch["tokens"].shape == (4, 32) and str(batch["tokens"].dtype) == "torch.int64"
    assert set(batch["tokens"].flatten().tolist()) <= stream
    assert (batch["tokens"][:, 1:] == batch["labels"][:, :-1]).all()
