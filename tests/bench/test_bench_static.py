from __future__ import annotations

import csv
import io

import pytest
from bench_tokenizer import train_tokenizer

from llmbuild.errors import UserError

pytest.importorskip("numpy")
pytest.importorskip("tokenizers")
pytest.importorskip("aiohttp")

import numpy as np  # noqa: E402

from llmbuild.bench.prompts import PromptMaker, load_tokenizer  # noqa: E402
from llmbuild.bench.records import RequestRecord  # noqa: E402
from llmbuild.bench.static import (  # noqa: E402
    CONFIG_COLUMNS,
    VALIDITY_COLUMNS,
    Cell,
    StaticConfig,
    build_requests,
    cell_row,
    write_csv,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def maker(tokenizer_dir):
    return PromptMaker(load_tokenizer(tokenizer_dir))


@pytest.mark.parametrize("length", [1, 2, 7, 32, 100, 511])
def test_prompt_has_exact_token_length(maker, length):
    rng = np.random.default_rng(0)
    for _ in range(5):
        text = maker.make(length, rng)
        assert len(maker.tok.encode(text, add_special_tokens=True).ids) == length


def test_prompt_length_counts_bos_when_tokenizer_adds_it():
    tok = train_tokenizer(bos=True)
    m = PromptMaker(tok)
    assert m.n_special == 1
    text = m.make(20, np.random.default_rng(1))
    ids = tok.encode(text, add_special_tokens=True).ids
    assert len(ids) == 20 and ids[0] == 0
    with pytest.raises(UserError, match="no room"):
        m.make(1, np.random.default_rng(1))


def test_prompts_are_seeded_and_distinct(maker):
    a = [maker.make(16, np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(3)
    assert maker.make(16, rng) != maker.make(16, rng)


def test_requests_share_exact_prefix(maker):
    cfg = StaticConfig((2,), (24,), (4,), epochs=2, seed=5, prefix_len=10)
    rounds = build_requests(cfg, Cell(2, 24, 4), maker)
    assert [len(r) for r in rounds] == [2, 2]
    specs = [s for r in rounds for s in r]
    ids = [maker.tok.encode(s.prompt).ids for s in specs]
    assert all(len(x) == 24 for x in ids)
    assert all(x[:10] == ids[0][:10] for x in ids)
    assert len({s.prompt for s in specs}) == 4  # each request its own prompt
    assert len({s.request_id for s in specs}) == 4
    again = build_requests(cfg, Cell(2, 24, 4), maker)
    assert [s.prompt for r in again for s in r] == [s.prompt for s in specs]


def test_unequal_length_lists_are_a_clear_error():
    with pytest.raises(UserError, match="--input-len has 2 values and --output-len has 1"):
        StaticConfig((1,), (32, 64), (16,))


@pytest.mark.parametrize(
    "kw,flag",
    [
        (dict(concurrency=(0,)), "--concurrency"),
        (dict(epochs=0), "--epochs"),
        (dict(prefix_len=32), "--prefix-len"),
    ],
)
def test_config_rejects_bad_values(kw, flag):
    base = dict(concurrency=(1,), input_lens=(32,), output_lens=(16,))
    with pytest.raises(UserError, match=flag):
        StaticConfig(**{**base, **kw})


def test_value_lists_are_comma_separated(tmp_path, capsys):
    import argparse

    from llmbuild.bench import cli
    from llmbuild.schema import default

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="verb"))
    base = ["static", "--base-url", "http://h:1/v1", "--tokenizer", "t"]
    base += ["--output", "o.csv", "--records", "r.jsonl"]
    args = parser.parse_args(base + ["--concurrency", "1,2, 4"])
    assert args.concurrency == (1, 2, 4)
    # the others are the schema's
    assert args.input_len == tuple(default("bench.static.input_len"))
    assert (args.epochs, args.seed) == (default("bench.static.epochs"), 0)
    for bad, needle in (
        (["--concurrency", "1,two"], "--concurrency"),
        (["--concurrency", "8", "16"], "unrecognized arguments: 16"),  # never space-separated
        (["--input-len", "0"], "--input-len"),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(base + bad)
        assert needle in capsys.readouterr().err


def test_cells_are_pairs_times_concurrency():
    cfg = StaticConfig((1, 4), (32, 64), (16, 8))
    assert cfg.cells() == [Cell(1, 32, 16), Cell(4, 32, 16), Cell(1, 64, 8), Cell(4, 64, 8)]


def test_csv_columns_config_then_metrics_then_validity():
    cfg = StaticConfig((2,), (32,), (4,), epochs=1)
    recs = [
        RequestRecord(
            prompt_len=32,
            output_len=4,
            success=True,
            ttft=0.1,
            itl=[0.01] * 3,
            latency=0.13,
            output_tokens=4,
            output_tokens_source="usage",
            server_prompt_tokens=32,
        ),
        RequestRecord(prompt_len=32, output_len=4, error="HTTP 500:\nboom"),
    ]
    row = cell_row(cfg, Cell(2, 32, 4), "m", recs, 1.0, None)
    buf = io.StringIO()
    write_csv([row], buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    header = list(rows[0].keys())
    assert tuple(header[: len(CONFIG_COLUMNS)]) == CONFIG_COLUMNS
    assert tuple(header[-len(VALIDITY_COLUMNS) :]) == VALIDITY_COLUMNS
    assert header.index("p90_ttft_ms") > header.index("prefix_len")
    r = rows[0]
    assert (r["concurrency"], r["num_requests"], r["model"]) == ("2", "2", "m")
    assert (r["successes"], r["failures"]) == ("1", "1")
    assert r["first_error"] == "HTTP 500: boom"  # one line
    assert r["too_few_for_p99"] == "True"
    assert r["output_len_mismatch"] == "0" and r["prompt_len_mismatch"] == "0"
    assert float(r["p90_tpot_ms"]) == pytest.approx(10.0)
