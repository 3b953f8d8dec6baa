import json

import pytest

from llmbuild.data import formats
from llmbuild.errors import UserError

pytestmark = pytest.mark.unit


def write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("".join(line + "\n" for line in lines))
    return p


def test_alpaca_with_input_and_history(tmp_path):
    rec = {"instruction": "Do", "input": "x", "output": "y", "history": [["a", "b"]]}
    p = write(tmp_path, "a.jsonl", [json.dumps(rec)])
    (msgs,) = list(formats.read_instructions(p, "alpaca"))
    assert msgs == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "Do\nx"},
        {"role": "assistant", "content": "y"},
    ]


def test_malformed_line_names_file_and_line(tmp_path):
    good = json.dumps({"instruction": "i", "input": "", "output": "o"})
    p = write(tmp_path, "a.jsonl", [good, "{not json"])
    with pytest.raises(UserError) as exc:
        list(formats.read_instructions(p, "alpaca"))
    assert str(exc.value).startswith(f"{p}:2: malformed JSON")


def test_missing_field_names_it(tmp_path):
    p = write(tmp_path, "a.jsonl", [json.dumps({"instruction": "i"})])
    with pytest.raises(UserError, match=r":1: output: missing"):
        list(formats.read_instructions(p, "alpaca"))


def test_sharegpt_and_openai(tmp_path):
    sg = {
        "conversations": [
            {"from": "system", "value": "s"},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
        ]
    }
    p = write(tmp_path, "s.json", [json.dumps([sg])])
    (msgs,) = list(formats.read_instructions(p, "sharegpt"))
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    oa = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    p2 = write(tmp_path, "o.jsonl", [json.dumps(oa)])
    assert list(formats.read_instructions(p2, "openai")) == [oa["messages"]]
    bad = {"conversations": [{"from": "robot", "value": "x"}]}
    p3 = write(tmp_path, "b.jsonl", [json.dumps(bad)])
    with pytest.raises(UserError, match=r"conversations\[0\]\.from"):
        list(formats.read_instructions(p3, "sharegpt"))


def test_pretrain_readers(tmp_path):
    p = write(
        tmp_path,
        "c.jsonl",
        [json.dumps({"text": "one"}), json.dumps({"text": ""}), json.dumps({"text": "two"})],
    )
    assert list(formats.read_pretrain(p)) == ["one", "two"]
    t = write(tmp_path, "c.txt", ["para one", "line two", "", "para two"])
    assert list(formats.read_pretrain(t)) == ["para one\nline two", "para two"]
    with pytest.raises(UserError, match="text_key|missing"):
        list(formats.read_pretrain(p, text_key="body"))
    with pytest.raises(UserError, match="unknown pretraining format"):
        list(formats.read_pretrain(tmp_path / "x.csv"))
