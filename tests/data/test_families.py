"""Special tokens and SFT masking with the tokenizers of every registered family (built locally
by tests/families.py with their real special ids and chat templates) and the embedded default's.

Pretraining documents end with the tokenizer's own end token and start with BOS exactly once
where the family has one; conversation labels train exactly the assistant replies and their
end-of-turn token; bad special-token settings and non-UTF-8 input are one-line errors.

Over 400 lines because it is one table of cases per family (four families and the tiny
default) over the same few assertions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("megatron.core")
pytest.importorskip("transformers")

from megatron.core.datasets.indexed_dataset import IndexedDataset  # noqa: E402

from llmbuild.cli import main  # noqa: E402
from llmbuild.data import handlers  # noqa: E402
from llmbuild.data import tokenize as tk  # noqa: E402
from llmbuild.errors import UserError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import families  # noqa: E402

pytestmark = pytest.mark.unit

NAMES = ["llama2", "llama3", "qwen2.5", "mistral", "tiny"]
# name -> (EOD token, its id, BOS id or None, pad id)
EXPECTED = {
    "llama2": ("</s>", 2, 1, 2),
    "llama3": ("<|end_of_text|>", 128001, 128000, 128001),
    "qwen2.5": ("<|endoftext|>", 151643, None, 151643),
    "mistral": ("</s>", 2, 1, 2),
    # the embedded default: eos_token <|end|> (4), pad_token <|endoftext|> (0)
    "tiny": ("<|end|>", 4, None, 0),
}
# What each family's template writes after an assistant reply, as the trained labels decode.
REPLY = {
    "llama2": "{} </s>",
    "llama3": "{}<|eot_id|>",
    "qwen2.5": "{}<|im_end|>\n",
    "mistral": "{}</s>",
    "tiny": "{}<|end|>\n",
}
# Prompt-side special tokens that must never be trained.
PROMPT_SPECIALS = {
    "llama2": ["<s>"],
    "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
    "qwen2.5": ["<|im_start|>"],
    "mistral": ["<s>", "[INST]", "[/INST]"],
    "tiny": ["<|system|>", "<|user|>", "<|assistant|>"],
}
END_OF_TURN = {
    "llama2": "</s>",
    "llama3": "<|eot_id|>",
    "qwen2.5": "<|im_end|>",
    "mistral": "</s>",
    "tiny": "<|end|>",
}
DOCS = [
    "The model reads a book.",
    "Hello, world! Count with me: 1 2 3.",
    "Café au lait, naïve façade \u2014 and a snowman \u2603.",  # byte fallback / byte level
    "Two lines\nin one document.",
]
SYSTEM = "Answer in capitals."
CONVERSATIONS = {
    "single": [
        {"role": "user", "content": "Convert a b c."},
        {"role": "assistant", "content": "A B C"},
    ],
    "multi": [
        {"role": "user", "content": "Convert a b c."},
        {"role": "assistant", "content": "A B C"},
        {"role": "user", "content": "And x y?"},
        {"role": "assistant", "content": "X Y"},
    ],
}
CONVERSATIONS["system_single"] = [{"role": "system", "content": SYSTEM}, *CONVERSATIONS["single"]]
CONVERSATIONS["system_multi"] = [{"role": "system", "content": SYSTEM}, *CONVERSATIONS["multi"]]


def run(*args: str) -> int:
    return main(["data", "tokenize", *args])


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmbuild", "data", "tokenize", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tokdirs(tmp_path_factory) -> dict[str, Path]:
    from llmbuild.data.synth import corpus_documents
    from llmbuild.model.tiny import SPECIAL_TOKENS, save_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("families")
    dirs = {name: families.build_tokenizer(name, root / name) for name in families.FAMILIES}
    tiny = root / "tiny"
    tiny.mkdir()
    save_tokenizer(train_tokenizer(corpus_documents(200, 0), 512), tiny, 512)
    assert SPECIAL_TOKENS.index("<|end|>") == 4
    dirs["tiny"] = tiny
    return dirs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    return p


def pretrain(tokdir: Path, corpus: Path, out: Path, *extra: str) -> tuple[dict, list[list[int]]]:
    args = ["--kind", "pretrain", "--input", str(corpus), "--tokenizer", str(tokdir)]
    assert run(*args, "--output", str(out), "--seq-length", "64", *extra) == 0
    meta = json.loads((out / "meta.json").read_text())
    ds = IndexedDataset(str(out / "text_document"))
    return meta, [ds[i].tolist() for i in range(len(ds))]


# --------------------------------------------------------------------------- the builders


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_family_tokenizer_has_the_published_ids(name, tokdirs):
    fam = families.family(name)
    tok = tk.load_tokenizer(tokdirs[name])
    assert len(tok) == fam.tokenizer_size
    for content, _ in fam.added:
        assert tok.convert_tokens_to_ids(content) == fam.token_id(content)
    assert tok.eos_token_id == fam.eos_id and tok.bos_token_id == fam.bos_id
    ids = {
        "llama2": {"<unk>": 0, "<s>": 1, "</s>": 2},
        "mistral": {"<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[control_8]": 10},
        "llama3": {
            "<|begin_of_text|>": 128000,
            "<|end_of_text|>": 128001,
            "<|start_header_id|>": 128006,
            "<|end_header_id|>": 128007,
            "<|eot_id|>": 128009,
            "<|reserved_special_token_247|>": 128255,
        },
        "qwen2.5": {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645},
    }[name]
    assert {t: tok.convert_tokens_to_ids(t) for t in ids} == ids
    cfg = json.loads((tokdirs[name] / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == fam.chat_template
    assert cfg["tokenizer_class"] == fam.tokenizer_class
    text = "Hello, world! Caf\u00e9 \u2603"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_family_models_have_their_features(tmp_path):
    from safetensors import safe_open

    cfgs = {}
    for name in ("llama3", "qwen2.5"):
        out = families.build_model(name, tmp_path / name, layers=1)
        cfgs[name] = json.loads((out / "config.json").read_text())
        gen = json.loads((out / "generation_config.json").read_text())
        assert gen["eos_token_id"] == families.family(name).generation["eos_token_id"]
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
            assert f.get_tensor("model.embed_tokens.weight").dtype.is_floating_point
        if name == "qwen2.5":
            assert "model.layers.0.self_attn.q_proj.bias" in keys and "lm_head.weight" not in keys
        else:
            assert "lm_head.weight" in keys
    assert cfgs["llama3"]["rope_parameters"]["rope_type"] == "llama3"
    assert cfgs["llama3"]["vocab_size"] == 128256 and cfgs["qwen2.5"]["vocab_size"] == 151936
    assert cfgs["qwen2.5"]["tie_word_embeddings"] is True
    for cfg in cfgs.values():
        assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (
            128,
            4,
            2,
        )
    assert families.model_config("llama2")["num_key_value_heads"] == 4  # plain MHA
    assert families.model_config("mistral")["sliding_window"] is None


# --------------------------------------------------------------------------- pretraining


@pytest.mark.parametrize("name", NAMES)
def test_pretrain_documents_end_with_the_tokenizers_end_token(name, tokdirs, corpus, tmp_path):
    eod_token, eod, bos, pad = EXPECTED[name]
    meta, docs = pretrain(tokdirs[name], corpus, tmp_path / "out")
    assert (meta["eod_id"], meta["eod_token"], meta["bos_id"], meta["pad_id"]) == (
        eod,
        eod_token,
        bos,
        pad,
    )
    assert set(meta["special_token_sources"]) == {"eod_id", "pad_id", "bos_id"}
    sources = meta["special_token_sources"]
    assert sources["eod_id"] == "the tokenizer's eos_token"
    assert sources["bos_id"] == (
        "the tokenizer's post-processor (add_special_tokens=True)"
        if bos is not None
        else "none: the tokenizer adds no BOS"
    )
    tok = tk.load_tokenizer(tokdirs[name])
    assert meta["bos_token"] == (None if bos is None else tok.bos_token)
    assert len(docs) == len(DOCS)
    for text, ids in zip(DOCS, docs, strict=True):
        assert ids[-1] == eod and eod not in ids[:-1]
        if bos is not None:
            assert ids[0] == bos and ids.count(bos) == 1
        else:
            assert tok.bos_token_id is None or tok.bos_token_id not in ids
        if name in ("llama2", "mistral"):
            assert 0 not in ids  # never <unk>
        # Megatron-LM's preprocess_data.py: the tokenizer's own special tokens, then the EOD
        assert ids == tok(text)["input_ids"] + [eod]
        body = ids[1:-1] if bos is not None else ids[:-1]
        assert tok.decode(body) == text


def test_eod_token_flag_overrides_and_pad_follows(tokdirs, corpus, tmp_path):
    meta, docs = pretrain(tokdirs["llama3"], corpus, tmp_path / "out", "--eod-token", "<|eot_id|>")
    assert (meta["eod_id"], meta["eod_token"], meta["pad_id"]) == (128009, "<|eot_id|>", 128009)
    assert meta["special_token_sources"]["eod_id"].startswith("--eod-token")
    assert all(ids[-1] == 128009 and ids[0] == 128000 for ids in docs)
    # the embedded default's old end of document, on request
    meta, docs = pretrain(
        tokdirs["tiny"], corpus, tmp_path / "tiny", "--eod-token", "<|endoftext|>"
    )
    assert (meta["eod_id"], meta["pad_id"]) == (0, 0)
    assert all(ids[-1] == 0 for ids in docs)


def test_pretrain_with_workers_is_the_same(tokdirs, corpus, tmp_path):
    _, one = pretrain(tokdirs["llama3"], corpus, tmp_path / "one")
    _, two = pretrain(tokdirs["llama3"], corpus, tmp_path / "two", "--workers", "2")
    assert one == two


def test_eod_token_not_in_vocabulary_is_one_line_error(tokdirs, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    rc = run(
        *("--kind", "pretrain", "--input", str(corpus), "--tokenizer", str(tokdirs["llama2"])),
        *("--output", str(out), "--seq-length", "64", "--eod-token", "<|endoftext|>"),
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith("llmbuild data tokenize: error: --eod-token: '<|endoftext|>' is not a ")
    assert "set data.eod_token to a token of the vocabulary" in err and "'</s>'" in err
    assert not out.exists()


def _without_eos(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = json.loads((dst / name).read_text())
        cfg.pop("eos_token", None)
        (dst / name).write_text(json.dumps(cfg))
    return dst


def test_eos_falls_back_to_generation_config_then_config(tokdirs, tmp_path):
    d = _without_eos(tokdirs["llama3"], tmp_path / "noeos")
    assert tk.load_tokenizer(d).eos_token is None
    (d / "config.json").write_text(json.dumps({"eos_token_id": 128009}))
    s = tk.resolve_special_tokens(d)
    assert (s.eod_id, s.eod_token, s.eod_source) == (
        128009,
        "<|eot_id|>",
        "config.json eos_token_id",
    )
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128009]}))
    s = tk.resolve_special_tokens(d)
    assert (s.eod_id, s.eod_token, s.eod_source) == (
        128001,
        "<|end_of_text|>",
        "generation_config.json eos_token_id",
    )
    assert (s.pad_id, s.bos_id) == (128001, 128000)


def test_no_eos_anywhere_is_one_line_error_naming_the_file(tokdirs, corpus, tmp_path):
    d = _without_eos(tokdirs["llama3"], tmp_path / "noeos")
    out = tmp_path / "out"
    proc = cli(
        *("--kind", "pretrain", "--input", str(corpus), "--tokenizer", str(d)),
        *("--output", str(out), "--seq-length", "64"),
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        f"llmbuild data tokenize: error: {d / 'tokenizer_config.json'}: eos_token: "
    )
    assert "set data.eod_token" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out*"))


# --------------------------------------------------------------------------- SFT masking


def _runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    cur: list[int] = []
    for i, lab in zip(ids, labels, strict=True):
        if lab != -100:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def _cases(name: str) -> list[str]:
    # Mistral v0.3's template keeps a system message only while a user turn is last: a
    # finished conversation renders without it, so it is refused (see the test below).
    return [c for c in CONVERSATIONS if name != "mistral" or not c.startswith("system")]


@pytest.mark.parametrize("name", NAMES)
def test_sft_labels_are_exactly_the_replies_and_their_end_of_turn(name, tokdirs, tmp_path):
    cases = _cases(name)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": CONVERSATIONS[c]}) + "\n" for c in cases))
    out = tmp_path / "out"
    args = ["--kind", "sft", "--format", "openai", "--input", str(data)]
    assert (
        run(*args, "--tokenizer", str(tokdirs[name]), "--output", str(out), "--seq-length", "512")
        == 0
    )
    meta = json.loads((out / "meta.json").read_text())
    eod_token, eod, bos, pad = EXPECTED[name]
    assert (meta["eod_id"], meta["pad_id"], meta["bos_id"]) == (eod, pad, bos)
    bos_source = meta["special_token_sources"]["bos_id"]
    assert bos_source == "the chat template" if bos is not None else bos_source.startswith("none")
    tok = tk.load_tokenizer(tokdirs[name])
    ids_ds = IndexedDataset(str(out / "input_ids_document"))
    labels_ds = IndexedDataset(str(out / "labels_document"))
    assert len(ids_ds) == len(cases)
    eot = tok.convert_tokens_to_ids(END_OF_TURN[name])
    prompt_ids = {tok.convert_tokens_to_ids(t) for t in PROMPT_SPECIALS[name]}
    for n, case in enumerate(cases):
        conv = CONVERSATIONS[case]
        ids, labels = ids_ds[n].tolist(), labels_ds[n].tolist()
        replies = [m["content"] for m in conv if m["role"] == "assistant"]
        runs = _runs(ids, labels)
        assert [tok.decode(r) for r in runs] == [REPLY[name].format(a) for a in replies], case
        trained = [i for r in runs for i in r]
        assert not prompt_ids & set(trained)
        assert trained.count(eot) == len(replies)
        masked = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab == -100])
        for m in conv:
            if m["role"] != "assistant":
                assert m["content"] in masked
        if case.startswith("system"):
            assert SYSTEM in masked
        elif name == "qwen2.5":
            assert families.QWEN_DEFAULT_SYSTEM in masked and ids.count(eot) == len(conv) + 1
        if name == "llama3":
            assert "Cutting Knowledge Date: December 2023" in masked
            assert ids.count(eot) == len(conv) + (not case.startswith("system"))
        if bos is not None:
            assert ids[0] == bos and ids[1] != bos  # never a double BOS
            users = sum(m["role"] == "user" for m in conv)
            # Llama 2's template opens every user turn with <s>; the others once
            assert ids.count(bos) == (users if name == "llama2" else 1)
        elif tok.bos_token_id is not None:
            assert tok.bos_token_id not in ids


def test_mistral_system_message_is_refused_in_one_line(tokdirs, tmp_path, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"messages": CONVERSATIONS["system_single"]}) + "\n")
    out = tmp_path / "out"
    rc = run(
        *("--kind", "sft", "--format", "openai", "--input", str(data)),
        *("--tokenizer", str(tokdirs["mistral"]), "--output", str(out), "--seq-length", "512"),
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert "chat_template: " in err and "drop the system messages" in err
    assert not out.exists()


def test_double_bos_from_a_template_is_collapsed(tokdirs, tmp_path):
    d = tmp_path / "twice"
    shutil.copytree(tokdirs["llama3"], d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ bos_token }}" + cfg["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = tk.load_tokenizer(d)
    handlers.Encoder.init(str(d), 128001, tok)
    ids, labels = handlers.Encoder.conversation(CONVERSATIONS["single"])
    assert ids[:2] == [128000, 128006] and len(ids) == len(labels)


# --------------------------------------------------------------------------- UTF-8


@pytest.mark.parametrize(
    ("kind", "name", "lines", "bad_line", "column"),
    [
        ("pretrain", "docs.jsonl", ['{"text": "ok"}', b'{"text": "caf\xe9"}'], 2, 14),
        ("pretrain", "docs.txt", ["first paragraph", "", b"\xff second"], 3, 1),
        (
            "sft",
            "chat.jsonl",
            [
                '{"instruction": "i", "output": "o"}',
                '{"instruction": "i", "output": "o"}',
                b'{"instruction": "\xc3(", "output": "o"}',
            ],
            3,
            18,
        ),
    ],
)
def test_non_utf8_line_is_one_line_error_through_the_cli(
    kind, name, lines, bad_line, column, tokdirs, tmp_path
):
    data = tmp_path / name
    data.write_bytes(
        b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)
    )
    out = tmp_path / "out"
    proc = cli(
        *("--kind", kind, "--input", str(data), "--tokenizer", str(tokdirs["qwen2.5"])),
        *("--output", str(out), "--seq-length", "64"),
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines_err = proc.stderr.strip().splitlines()
    assert len(lines_err) == 1, proc.stderr
    byte = lines[bad_line - 1][column - 1]
    assert lines_err[0] == (
        f"llmbuild data tokenize: error: {data}:{bad_line}: not UTF-8 (byte 0x{byte:02x} at "
        f"column {column}); re-encode the file as UTF-8"
    )
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_unknown_resolution_error_is_user_error(tokdirs, tmp_path):
    d = _without_eos(tokdirs["llama3"], tmp_path / "noeos")
    (d / "config.json").write_text(json.dumps({"eos_token_id": 999999}))
    with pytest.raises(UserError, match=r"config.json eos_token_id 999999 is not an id"):
        tk.resolve_special_tokens(d)


def test_families_cli_writes_a_tokenizer_directory(tmp_path, capsys):
    assert (
        families.main(["--family", "mistral", "--out", str(tmp_path / "m"), "--tokenizer-only"])
        == 0
    )
    assert "wrote mistral" in capsys.readouterr().out
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert names == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    with pytest.raises(SystemExit):
        families.main(["--family", "gpt2", "--out", str(tmp_path / "x")])


@pytest.mark.parametrize("name", NAMES)
def test_dpo_pairs_share_the_prompt_and_train_only_each_answer(name, tokdirs, tmp_path):
    recs = [
        {"instruction": "Convert the letters to capitals.", "input": "a b c", "chosen": "A B C"},
        {"instruction": "Reverse the letters.", "input": "x y", "chosen": "y x"},
    ]
    data = tmp_path / "pref.jsonl"
    data.write_text("".join(json.dumps({**r, "rejected": r["input"]}) + "\n" for r in recs))
    out = tmp_path / "out"
    args = ["--kind", "dpo", "--input", str(data), "--tokenizer", str(tokdirs[name])]
    assert run(*args, "--output", str(out), "--seq-length", "256") == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "dpo" and meta["stats"]["documents"] == len(recs)
    tok = tk.load_tokenizer(tokdirs[name])
    ds = {k: IndexedDataset(str(out / v)) for k, v in meta["prefixes"].items()}
    for n, rec in enumerate(recs):
        c_ids, c_lab = ds["chosen_ids"][n].tolist(), ds["chosen_labels"][n].tolist()
        r_ids, r_lab = ds["rejected_ids"][n].tolist(), ds["rejected_labels"][n].tolist()
        start = c_lab.index(next(x for x in c_lab if x != -100))
        assert c_ids[:start] == r_ids[:start]  # the same prompt tokens, masked in both
        assert set(c_lab[:start]) == set(r_lab[:start]) == {-100}
        reply = REPLY[name]
        assert [tok.decode(r) for r in _runs(c_ids, c_lab)] == [reply.format(rec["chosen"])]
        assert [tok.decode(r) for r in _runs(r_ids, r_lab)] == [reply.format(rec["input"])]


def test_dpo_record_with_equal_answers_is_one_line(tokdirs, tmp_path, capsys):
    data = tmp_path / "pref.jsonl"
    data.write_text(json.dumps({"instruction": "x", "chosen": "a", "rejected": "a"}) + "\n")
    args = ["--kind", "dpo", "--input", str(data), "--tokenizer", str(tokdirs["llama3"])]
    assert run(*args, "--output", str(tmp_path / "out"), "--seq-length", "64") != 0
    err = capsys.readouterr().err
    assert f"{data}:1: rejected: chosen and rejected are the same answer" in err
    assert not (tmp_path / "out").exists()
