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


def test_non_utf8_jsonl_line_names_file_line_byte_and_column(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"text": "ok"}\n\n{"text": "bad \xff"}\n{"text": "never read"}\n')
    with pytest.raises(UserError) as exc:
        list(formats.read_pretrain(p))
    assert str(exc.value) == (
        f"{p}:3: not UTF-8 (byte 0xff at column 15); re-encode the file as UTF-8"
    )
    good = json.dumps({"instruction": "i", "input": "", "output": "o"}).encode()
    q = tmp_path / "i.jsonl"
    q.write_bytes(good + b"\n" + good.replace(b'"o"', b'"\xe9t\xe9"') + b"\n")
    with pytest.raises(UserError, match=rf"^{q}:2: not UTF-8 \(byte 0xe9 at column \d+\)"):
        list(formats.read_instructions(q, "alpaca"))


def test_non_utf8_txt_line_names_file_and_line(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes(b"para one\n\n\xc3( two\n")
    with pytest.raises(UserError, match=rf"^{p}:3: not UTF-8 \(byte 0xc3 at column 1\); re-enc"):
        list(formats.read_pretrain(p))


def test_non_utf8_json_names_line_and_byte_offset(tmp_path):
    p = tmp_path / "s.json"
    p.write_bytes(b'[\n {"text": "a"},\n {"text": "\x80"}\n]\n')
    with pytest.raises(UserError) as exc:
        list(formats.read_pretrain(p))
    assert str(exc.value) == (
        f"{p}:3: not UTF-8 (byte 0x80 at byte offset 29, column 12); re-encode the file as UTF-8"
    )


def test_utf8_bom_and_crlf_are_read(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"text": "caf\xc3\xa9"}\r\n{"text": "two"}\r\n')
    assert list(formats.read_pretrain(p)) == ["café", "two"]
    t = tmp_path / "c.txt"
    t.write_bytes(b"line one\r\nline two\r\n\r\npara two\r\n")
    assert list(formats.read_pretrain(t)) == ["line one\nline two", "para two"]
    j = tmp_path / "c.json"
    j.write_bytes(b'\xef\xbb\xbf[{"text": "x"}]')
    assert list(formats.read_pretrain(j)) == ["x"]
