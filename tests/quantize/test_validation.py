"""Input validation: one-line UserErrors naming the file, the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmbuild.errors import UserError
from llmbuild.quantize import calib, schemes
from llmbuild.quantize.spec import QuantSpec, ScalesSpec, check_model_dir

pytestmark = pytest.mark.unit


def _model_dir(tmp_path: Path, *, chat_template: bool = True) -> Path:
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")
    (d / "tokenizer.json").write_text("{}")
    cfg = {"chat_template": "{{ x }}"} if chat_template else {}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def _calib(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "calib.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def _spec(tmp_path: Path, **kw) -> QuantSpec:
    kw.setdefault("model", _model_dir(tmp_path))
    kw.setdefault("output", tmp_path / "out")
    kw.setdefault("calib", _calib(tmp_path, ['{"text": "hello"}']))
    if kw.get("scheme", "w8a8").lower() == "w8a8" and "scale_input" not in kw:
        kw.setdefault("smoothing_strength", 0.5)  # w8a8 computes its scales
    return QuantSpec(**kw)


@pytest.mark.parametrize("strength", [0.0, 1.0, -0.1, 1.5])
def test_strength_outside_open_interval(tmp_path, strength):
    with pytest.raises(UserError, match=r"--smoothing-strength: .* outside \(0, 1\)"):
        _spec(tmp_path, smoothing_strength=strength)


def test_good_spec_normalises_scheme(tmp_path):
    spec = _spec(tmp_path, scheme="W8A8", smoothing_strength=0.85)
    assert spec.scheme == "w8a8" and spec.spec.preset == "W8A8"
    assert spec.computes_scales and spec.needs_calibration


@pytest.mark.parametrize("scheme", ["W4A8", "fp8", ""])
def test_unsupported_scheme(scheme):
    with pytest.raises(UserError, match="--scheme: unknown scheme .*; use one of w8a8, w8a16"):
        schemes.get(scheme)


def test_old_w4a16_name_says_what_it_became():
    with pytest.raises(UserError, match=r"w4a16 is now w4a16-gptq or w4a16-awq"):
        schemes.get("w4a16")


def test_scheme_table():
    assert list(schemes.SCHEMES) == [
        "w8a8",
        "w8a16",
        "w4a16-gptq",
        "w4a16-awq",
        "kv-fp8",
        "kv-int8",
    ]
    smoothed = [n for n, s in schemes.SCHEMES.items() if s.smoothing]
    assert smoothed == ["w8a8"]  # weight-only and KV-cache schemes are never smoothed
    calibrated = [n for n, s in schemes.SCHEMES.items() if s.calibrates]
    assert calibrated == ["w4a16-gptq", "w4a16-awq", "kv-fp8", "kv-int8"]
    assert {s.catalog for s in schemes.SCHEMES.values()} == {
        "w8a8",
        "w8a16",
        "w4a16",
        "kv_cache_int8",
    }


@pytest.mark.parametrize("scheme", ["w8a16", "w4a16-gptq", "w4a16-awq", "kv-fp8"])
@pytest.mark.parametrize("flag", ["smoothing_strength", "scale_output"])
def test_schemes_without_smoothing_refuse_it(tmp_path, scheme, flag):
    value = 0.5 if flag == "smoothing_strength" else tmp_path / "s.safetensors"
    with pytest.raises(UserError, match=f"{scheme} is .* gets no SmoothQuant smoothing; drop --"):
        _spec(tmp_path, scheme=scheme, **{flag: value})


def test_w8a8_needs_scales(tmp_path):
    with pytest.raises(UserError, match="--scale-input: w8a8 needs SmoothQuant scales"):
        _spec(tmp_path, scheme="w8a8", smoothing_strength=None)


def test_scales_spec(tmp_path):
    calib_path = _calib(tmp_path, ['{"text": "hello"}'])
    model = _model_dir(tmp_path)
    with pytest.raises(UserError, match="--output: a scale file is safetensors"):
        ScalesSpec(model=model, output=tmp_path / "s.pt", calib=calib_path)
    with pytest.raises(UserError, match="--smoothing-strength: 1.0 is outside"):
        ScalesSpec(
            model=model, output=tmp_path / "s.safetensors", calib=calib_path, smoothing_strength=1.0
        )
    ok = ScalesSpec(model=model, output=tmp_path / "s.safetensors", calib=calib_path)
    assert ok.smoothing_strength == 0.5


def test_missing_model_dir(tmp_path):
    with pytest.raises(UserError, match=r"nope: --input: does not exist") as e:
        check_model_dir(tmp_path / "nope")
    assert "\n" not in str(e.value)


def test_model_dir_without_tokenizer(tmp_path):
    d = _model_dir(tmp_path)
    (d / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="--input: has no tokenizer"):
        check_model_dir(d)
    (d / "tokenizer.model").write_text("")  # a tokenizer, but not the files the output carries
    with pytest.raises(UserError, match="--input: has no tokenizer.json"):
        check_model_dir(d)


def test_model_dir_without_chat_template(tmp_path):
    with pytest.raises(UserError, match="--input: has no chat template"):
        check_model_dir(_model_dir(tmp_path, chat_template=False))


def test_chat_template_jinja_is_enough(tmp_path):
    d = _model_dir(tmp_path, chat_template=False)
    (d / "chat_template.jinja").write_text("{{ x }}")
    check_model_dir(d)  # no error


def test_calib_required_unless_scales_given(tmp_path):
    with pytest.raises(UserError, match="--calib: a calibration file is required"):
        _spec(tmp_path, calib=None, smoothing_strength=0.5)
    scales = tmp_path / "s.safetensors"
    scales.write_bytes(b"x")
    spec = _spec(tmp_path, calib=None, scale_input=scales)
    assert not spec.needs_calibration
    assert not _spec(tmp_path, calib=None, scheme="w8a16").needs_calibration
    for scheme in ("w4a16-gptq", "w4a16-awq", "kv-fp8"):  # these calibrate themselves
        with pytest.raises(UserError, match="--calib"):
            QuantSpec(model=spec.model, output=spec.output, scheme=scheme)


def test_missing_calib_and_scale_files(tmp_path):
    with pytest.raises(UserError, match="calibration file not found"):
        _spec(tmp_path, calib=tmp_path / "none.jsonl")
    with pytest.raises(UserError, match="--scale-input: scale file not found"):
        _spec(tmp_path, scale_input=tmp_path / "none.safetensors")


def test_scale_metadata_read_without_torch(tmp_path):
    import struct

    from llmbuild.quantize import scales

    def write(path, meta):
        header = json.dumps({"__metadata__": meta}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header)
        return path

    good = write(tmp_path / "a.safetensors", {"format": scales.FORMAT, "smoothing_strength": "0.5"})
    assert scales.read_metadata(good)["smoothing_strength"] == "0.5"
    other = write(tmp_path / "b.safetensors", {"format": "pt"})
    with pytest.raises(UserError, match="b.safetensors: k: format 'pt', expected"):
        scales.read_metadata(other, field="k")
    (tmp_path / "c.safetensors").write_bytes(b"\xff" * 20)
    with pytest.raises(UserError, match="c.safetensors: --scale-input: not a safetensors scale"):
        scales.read_metadata(tmp_path / "c.safetensors")


def test_output_must_differ_from_model(tmp_path):
    m = _model_dir(tmp_path)
    with pytest.raises(UserError, match="would overwrite the input model"):
        _spec(tmp_path, model=m, output=m)


def test_bad_calib_json_names_line(tmp_path):
    p = _calib(tmp_path, ['{"text": "ok"}', "", '{"text": "ok"', '{"text": "x"}'])
    with pytest.raises(UserError, match=r"calib.jsonl:3: not valid JSON") as e:
        calib.read_records(p)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "x"}', r':1: neither "text" nor "instruction"'),
        ('{"text": ""}', r":1: text: must be a non-empty string"),
        (
            '{"instruction": "x", "input": 3, "output": "y"}',
            r":1: input: must be a string, got int",
        ),
        ("[1, 2]", r":1: expected a JSON object, got list"),
    ],
)
def test_bad_calib_record(tmp_path, line, message):
    with pytest.raises(UserError, match=message):
        calib.read_records(_calib(tmp_path, [line]))


def test_empty_calib(tmp_path):
    with pytest.raises(UserError, match="--calib: no records"):
        calib.read_records(_calib(tmp_path, ["", "  "]))


def test_alpaca_and_text_records(tmp_path):
    p = _calib(
        tmp_path,
        [
            json.dumps({"instruction": "Add", "input": "1 2", "output": "3"}),
            json.dumps({"instruction": "Hi", "output": "Hello"}),
            json.dumps({"text": "plain"}),
        ],
    )
    recs = calib.read_records(p)
    assert [(r.prompt, r.answer, r.text) for r in recs] == [
        ("Add\n1 2", "3", None),
        ("Hi", "Hello", None),
        (None, None, "plain"),
    ]
    assert [r.is_chat for r in recs] == [True, True, False]


def test_select_is_seeded_and_bounded():
    recs = [calib.Record(text=str(i)) for i in range(10)]
    a, b = calib.select(recs, 4, seed=0), calib.select(recs, 4, seed=0)
    assert a == b and len(a) == 4 and len(set(a)) == 4
    assert calib.select(recs, 4, seed=1) != a
    assert sorted(r.text for r in calib.select(recs, 99, seed=0)) == sorted(r.text for r in recs)


def test_cli_one_line_error(tmp_path, capsys):
    cli = pytest.importorskip("llmbuild.cli")
    try:
        cli.build_parser()
    except ModuleNotFoundError as exc:  # another stage's group not written yet
        pytest.skip(f"llmbuild CLI incomplete: {exc}")
    rc = cli.main(
        [
            "quantize",
            "smoothquant",
            "--input",
            str(tmp_path / "nope"),
            "--calib",
            str(tmp_path / "c.jsonl"),
            "--output",
            str(tmp_path / "o"),
            "--smoothing-strength",
            "1.2",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("llmbuild quantize smoothquant: error: --smoothing-strength:")
    assert "\n" not in err


def test_defaults_are_the_schemas(tmp_path):
    """The CLI's and QuantSpec's defaults are the config schema's (quantize.*), one place."""
    import argparse

    from llmbuild.quantize import cli
    from llmbuild.schema import default

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["smoothquant", "--input", "m", "--output", "o"])
    scales_args = parser.parse_args(["scales", "--input", "m", "--output", "o", "--calib", "c"])
    spec = _spec(tmp_path, smoothing_strength=0.5)
    model = _model_dir(tmp_path)
    sspec = ScalesSpec(model=model, output=tmp_path / "s.safetensors", calib=spec.calib)
    for key in ("num_samples", "seq_length", "seed"):
        assert getattr(args, key) == getattr(spec, key) == default(f"quantize.{key}"), key
    for key in ("smoothing_strength", "num_samples", "seq_length", "seed"):
        want = default(f"quantize.{key}")
        assert getattr(scales_args, key) == getattr(sspec, key) == want, key
