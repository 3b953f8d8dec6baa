"""Tokenization into megatron.core indexed datasets, on the tiny default's own tokenizer."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("megatron.core")
pytest.importorskip("transformers")

from megatron.core.datasets.indexed_dataset import IndexedDataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

pytestmark = pytest.mark.unit


def llmbuild(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "llmbuild", *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    llmbuild("data", "synth-corpus", "--output", str(d / "corpus.jsonl"), "--num-docs", "400")
    llmbuild(
        "model",
        "tiny",
        "--input",
        str(d / "corpus.jsonl"),
        "--output",
        str(d / "hf"),
        "--num-layers",
        "1",
    )
    return d


def test_tiny_model_directory_is_complete(tiny):
    hf = tiny / "hf"
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "provenance.json",
    ):
        assert (hf / name).is_file(), name
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 32
    assert "chat_template" in json.loads((hf / "tokenizer_config.json").read_text())


def test_pretrain_documents_end_with_eod(tiny):
    out = tiny / "pre"
    llmbuild(
        "data",
        "tokenize",
        "--kind",
        "pretrain",
        "--input",
        str(tiny / "corpus.jsonl"),
        "--tokenizer",
        str(tiny / "hf"),
        "--output",
        str(out),
        "--seq-length",
        "64",
    )
    meta = json.loads((out / "meta.json").read_text())
    ds = IndexedDataset(str(out / "text_document"))
    assert len(ds) == 400 == meta["stats"]["documents"]
    tok = AutoTokenizer.from_pretrained(str(tiny / "hf"))
    first = json.loads((tiny / "corpus.jsonl").read_text().splitlines()[0])["text"]
    assert list(ds[0]) == tok(first, add_special_tokens=False)["input_ids"] + [meta["eod_id"]]
    # the embedded default ends documents with its tokenizer's eos_token, pads with its
    # pad_token and adds no BOS
    assert (meta["eod_token"], meta["eod_id"]) == ("<|end|>", tok.eos_token_id)
    assert (meta["pad_token"], meta["pad_id"]) == ("<|endoftext|>", tok.pad_token_id)
    assert meta["bos_id"] is None
    assert all(ds[i][-1] == tok.eos_token_id for i in range(len(ds)))
    assert meta["stats"]["over_seq_length"] == sum(len(ds[i]) > 65 for i in range(len(ds)))


def test_instruction_labels_mask_exactly_the_prompt(tiny):
    data = tiny / "sft.jsonl"
    data.write_text(
        json.dumps(
            {"instruction": "Convert the letters to capitals.", "input": "a b c", "output": "A B C"}
        )
        + "\n"
    )
    out = tiny / "sft"
    llmbuild(
        "data",
        "tokenize",
        "--kind",
        "sft",
        "--input",
        str(data),
        "--tokenizer",
        str(tiny / "hf"),
        "--output",
        str(out),
        "--seq-length",
        "64",
    )
    # keep the datasets alive: items are views into their memory maps
    ids_ds = IndexedDataset(str(out / "input_ids_document"))
    labels_ds = IndexedDataset(str(out / "labels_document"))
    ids, labels = ids_ds[0].tolist(), labels_ds[0].tolist()
    tok = AutoTokenizer.from_pretrained(str(tiny / "hf"))
    trained = tok.decode([int(i) for i, lab in zip(ids, labels, strict=True) if lab != -100])
    assert trained == "A B C<|end|>\n"
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Convert the letters to capitals.\na b c"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert all(lab == -100 for lab in labels[:n_prompt])
    assert all(lab == i for i, lab in zip(ids[n_prompt:], labels[n_prompt:], strict=True))


def test_overlong_samples_are_reported_and_dropped(tiny):
    data = tiny / "long.jsonl"
    rows = [
        {"instruction": "x", "input": "", "output": "y"},
        {"instruction": "a " * 100, "input": "", "output": "b"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = llmbuild(
        "data",
        "tokenize",
        "--kind",
        "sft",
        "--input",
        str(data),
        "--tokenizer",
        str(tiny / "hf"),
        "--output",
        str(tiny / "long"),
        "--seq-length",
        "32",
    )
    assert "over seq_length 32: 1 (50.00%), dropped 1" in proc.stdout
    assert len(IndexedDataset(str(tiny / "long" / "input_ids_document"))) == 1


def test_malformed_instruction_line_is_one_line_error_and_no_output(tiny):
    data = tiny / "bad.jsonl"
    data.write_text(
        json.dumps({"instruction": "i", "input": "", "output": "o"})
        + "\n"
        + '{"instruction": "i", "output": \n'
    )
    out = tiny / "bad_out"
    proc = llmbuild(
        "data",
        "tokenize",
        "--kind",
        "sft",
        "--input",
        str(data),
        "--tokenizer",
        str(tiny / "hf"),
        "--output",
        str(out),
        "--seq-length",
        "32",
        check=False,
    )
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert errors == [
        f"llmbuild data tokenize: error: {data}:2: malformed JSON (Expecting "
        "value); each line must be one JSON object"
    ]
    assert not out.exists() and not list(tiny.glob(".bad_out*"))
