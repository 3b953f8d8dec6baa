"""Dataset generator (its distribution), loaders with filters, prompt assignment, arrivals."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("numpy")
pytest.importorskip("tokenizers")

import numpy as np  # noqa: E402

from llmbuild.bench.datasets import (  # noqa: E402
    LengthDist,
    assign_prompts,
    generate,
    load_dataset,
    write_jsonl,
)
from llmbuild.bench.dynamic import DynamicConfig, arrival_times  # noqa: E402
from llmbuild.bench.prompts import PromptMaker, load_tokenizer  # noqa: E402
from llmbuild.bench.workload import ModelMix, Workload  # noqa: E402
from llmbuild.errors import UserError  # noqa: E402

pytestmark = pytest.mark.unit


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def maker(tok):
    return PromptMaker(tok)


# --- the generator's distribution -----------------------------------------------------------


def test_unclipped_lengths_have_the_given_mean_and_std():
    d = LengthDist(1, 10_000, 1800, 500)
    x = d.sample(200_000, np.random.default_rng(0))
    assert x.dtype == np.int64
    assert x.mean() == pytest.approx(1800, abs=5)  # standard error 1.1
    assert x.std() == pytest.approx(500, abs=5)


def test_clipping_puts_the_tails_on_the_bounds():
    d = LengthDist(5, 20, 10, 10)
    x = d.sample(200_000, np.random.default_rng(1))
    assert x.min() == 5 and x.max() == 20
    # rounding then clipping: P(X < 5.5) lands on 5, P(X >= 19.5) on 20
    assert (x == 5).mean() == pytest.approx(_phi(-0.45), abs=0.005)
    assert (x == 20).mean() == pytest.approx(1 - _phi(0.95), abs=0.005)
    inner = (x == 12).mean()
    assert inner == pytest.approx(_phi(0.25) - _phi(0.15), abs=0.003)


def test_zero_std_is_constant():
    assert set(LengthDist(4, 8, 6, 0).sample(50, np.random.default_rng(0))) == {6}


@pytest.mark.parametrize(
    "args,flag",
    [
        ((0, 10, 5, 1), "--min-input"),
        ((10, 5, 7, 1), "--max-input"),
        ((1, 10, 11, 1), "--avg-input"),
        ((1, 10, 5, -1), "--std-input"),
    ],
)
def test_length_dist_rejects_bad_values(args, flag):
    with pytest.raises(UserError, match=flag):
        LengthDist(*args)


def test_generated_prompts_have_exactly_their_lengths_and_are_seeded(maker, tok):
    ins, outs = LengthDist(8, 60, 30, 10), LengthDist(2, 40, 16, 8, "output")
    a = generate(maker, 120, ins, outs, seed=5)
    assert [len(tok.encode(e.prompt).ids) for e in a] == [e.prompt_len for e in a]
    assert all(8 <= e.prompt_len <= 60 and 2 <= e.output_len <= 40 for e in a)
    assert np.mean([e.prompt_len for e in a]) == pytest.approx(30, abs=3)
    assert generate(maker, 120, ins, outs, seed=5) == a
    b = generate(maker, 120, ins, outs, seed=6)
    assert [e.prompt for e in b] != [e.prompt for e in a]
    # lengths depend on the seed only, not on the tokenizer
    expect = ins.sample(120, np.random.default_rng([5, 0x1E4]))
    assert [e.prompt_len for e in a] == list(expect)


def test_generate_needs_room_for_text(maker):
    with pytest.raises(UserError, match="--num-requests"):
        generate(maker, 0, LengthDist(4, 8, 6, 1), LengthDist(1, 2, 1, 0, "output"))


# --- loaders --------------------------------------------------------------------------------


def _write(path, records, jsonl=False):
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def test_sharegpt_first_two_turns_with_filters(tmp_path, tok):
    long_q = " ".join(["the quick brown fox"] * 20)
    recs = [
        {
            "id": "a",
            "conversations": [
                {"from": "human", "value": "the dog"},
                {"from": "gpt", "value": "a lazy dog jumps"},
            ],
        },
        {"id": "b", "conversations": [{"from": "human", "value": "only one turn"}]},
        {
            "id": "c",
            "conversations": [{"from": "human", "value": long_q}, {"from": "gpt", "value": "ok"}],
        },
        {
            "id": "d",
            "conversations": [
                {"from": "human", "value": "hills"},
                {"from": "gpt", "value": " ".join(["green hills"] * 30)},
                {"from": "human", "value": "more"},
            ],
        },
    ]
    path = _write(tmp_path / "sg.json", recs)
    entries, report = load_dataset(path, "sharegpt", tok)
    assert [e.prompt for e in entries] == ["the dog", long_q, "hills"]
    assert entries[0].prompt_len == len(tok.encode("the dog").ids)
    assert entries[0].output_len == len(
        tok.encode("a lazy dog jumps", add_special_tokens=False).ids
    )
    assert report.total == 4 and report.kept == 3 and report.dropped["with fewer than 2 turns"] == 1
    p_long = len(tok.encode(long_q).ids)
    out_d = entries[2].output_len
    entries, report = load_dataset(
        path, "sharegpt", tok, max_prompt_tokens=p_long - 1, max_tokens=out_d
    )
    assert [e.prompt for e in entries] == ["the dog"]
    assert report.dropped == {
        "with fewer than 2 turns": 1,
        "over --max-prompt-tokens": 1,
        "over --max-tokens": 1,
    }
    assert "kept 1 of 4 records" in str(report)


def test_alpaca_json_and_jsonl_and_fixed_output_len(tmp_path, tok):
    recs = [
        {"instruction": "Name a color.", "input": "", "output": "green"},
        {"instruction": "Uppercase:", "input": "dog", "output": "DOG"},
    ]
    for path in (_write(tmp_path / "a.json", recs), _write(tmp_path / "a.jsonl", recs, True)):
        entries, _ = load_dataset(path, "alpaca", tok)
        assert [e.prompt for e in entries] == ["Name a color.", "Uppercase:\ndog"]
    entries, _ = load_dataset(path, "alpaca", tok, output_len=64)
    assert [e.output_len for e in entries] == [64, 64]


def test_human_eval_jsonl(tmp_path, tok):
    recs = [
        {
            "task_id": "HumanEval/0",
            "prompt": "def add(a, b):\n",
            "canonical_solution": "    return a + b\n",
            "test": "",
            "entry_point": "add",
        },
    ]
    entries, _ = load_dataset(_write(tmp_path / "he.jsonl", recs, True), "human-eval", tok)
    assert entries[0].prompt == "def add(a, b):\n"
    assert entries[0].output_len == len(
        tok.encode("    return a + b\n", add_special_tokens=False).ids
    )


def test_custom_roundtrip_recounts_prompts(tmp_path, maker, tok):
    gen = generate(maker, 20, LengthDist(8, 30, 20, 5), LengthDist(3, 9, 6, 2, "output"), seed=1)
    path = tmp_path / "c.jsonl"
    with path.open("w") as fh:
        write_jsonl(gen, fh)
    entries, report = load_dataset(path, "custom", tok)
    assert entries == gen and report.kept == 20


@pytest.mark.parametrize(
    "kind,content,needle",
    [
        ("sharegpt", '[{"id": 1}]', "record 1: missing list 'conversations'"),
        ("alpaca", '{"instruction": "x"}\n', "record 1: missing field 'output'"),
        ("human-eval", '{"prompt": "x", "canonical_solution": 3}\n', "is not a string"),
        ("custom", '{"prompt": "x"}\n{oops\n', "line 2: invalid JSON"),
        ("custom", '{"prompt": "x"}\n', "missing integer field 'output_len'"),
    ],
)
def test_malformed_files_name_the_record(tmp_path, tok, kind, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=needle) as exc:
        load_dataset(path, kind, tok)
    assert str(path) in str(exc.value)


def test_missing_file_and_unknown_type(tmp_path, tok):
    with pytest.raises(UserError, match="no such dataset file"):
        load_dataset(tmp_path / "nope.json", "alpaca", tok)
    with pytest.raises(UserError, match="--dataset-type"):
        load_dataset(tmp_path / "nope.json", "parquet", tok)


# --- sampling and arrivals -----------------------------------------------------------------


def test_prompt_assignment_is_disjoint_until_the_dataset_runs_out():
    cells = assign_prompts(10, [4, 4, 4], seed=3)
    flat = [i for c in cells for i, _ in c]
    assert sorted(flat[:10]) == list(range(10))  # one full permutation first
    assert [r for c in cells for _, r in c] == [False] * 10 + [True] * 2
    assert assign_prompts(10, [4, 4, 4], seed=3) == cells
    assert assign_prompts(10, [4, 4, 4], seed=4) != cells


def test_arrivals_are_exponential_and_hit_the_rate_exactly():
    t = arrival_times(50.0, 20_000, seed=0)
    assert t[-1] == pytest.approx(20_000 / 50.0)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert np.all(gaps > 0)
    assert gaps.mean() == pytest.approx(1 / 50.0)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)  # exponential: CV 1
    for q in (0.5, 1.0, 2.0):  # P(gap <= q/rate) = 1 - e^-q
        assert (gaps <= q / 50.0).mean() == pytest.approx(1 - math.exp(-q), abs=0.01)
    assert np.array_equal(arrival_times(50.0, 100, seed=1), arrival_times(50.0, 100, seed=1))
    assert not np.array_equal(arrival_times(50.0, 100, seed=1), arrival_times(50.0, 100, seed=2))
    assert np.all(arrival_times(float("inf"), 5) == 0)


def test_rates_and_counts_parse_and_pair():
    import argparse

    from llmbuild.cliargs import positive_float_list

    assert positive_float_list("0.5,1, 2,inf") == (0.5, 1.0, 2.0, math.inf)
    for bad in ("0", "-1", "fast", "1 2", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float_list(bad)
    assert DynamicConfig((1.0, 2.0), (5,)).num_prompts == (5, 5)
    with pytest.raises(UserError, match="one count per rate"):
        DynamicConfig((1.0, 2.0, 3.0), (5, 6))
    for rates in ((), (0.0,), (1.0, -1.0)):
        with pytest.raises(UserError, match="--request-rate"):
            DynamicConfig(rates, (1,))
    with pytest.raises(UserError, match="--max-concurrency"):
        DynamicConfig((1.0,), (1,), max_concurrency=0)


def test_model_mix_parses_and_draws_by_weight():
    mix = ModelMix.parse("lora1=3, lora2=1,base")
    assert mix.names == ("lora1", "lora2", "base") and mix.weights == (3.0, 1.0, 1.0)
    draws = mix.draw(50_000, np.random.default_rng(0))
    assert draws.count("lora1") / 50_000 == pytest.approx(0.6, abs=0.01)
    assert str(mix) == "lora1=3,lora2=1,base=1"
    for bad in ("a=x", "a=1,a=2", "a=0", "=3", "a=-1,b=2"):
        with pytest.raises(UserError, match="--lora-mix"):
            ModelMix.parse(bad)


def test_workload_rejects_unknown_modes():
    with pytest.raises(UserError, match="--api"):
        Workload(api="embeddings")
    with pytest.raises(UserError, match="--output-mode"):
        Workload(output_mode="eos")
    assert Workload(api="chat").path == "chat/completions"


def test_filter_cli_writes_the_benchmark_format(tmp_path, tokenizer_dir, bench_cli, capsys):
    tok = load_tokenizer(tokenizer_dir)
    src = _write(
        tmp_path / "alpaca.json",
        [
            {"instruction": "Name a color.", "input": "", "output": "green"},
            {"instruction": " ".join(["the quick brown fox"] * 30), "input": "", "output": "x"},
        ],
    )
    out = tmp_path / "bench.jsonl"
    argv = ["filter-dataset", "--input", str(src), "--dataset-type", "alpaca"]
    argv += ["--tokenizer", str(tokenizer_dir), "--output", str(out)]
    assert bench_cli(argv + ["--max-prompt-tokens", "50"]) == 0
    assert "kept 1 of 2 records (dropped: 1 over --max-prompt-tokens)" in capsys.readouterr().out
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line == {
        "prompt": "Name a color.",
        "prompt_len": len(tok.encode("Name a color.").ids),
        "output_len": len(tok.encode("green", add_special_tokens=False).ids),
    }
    assert (tmp_path / "bench.jsonl.provenance.json").exists()
    assert bench_cli(argv + ["--max-prompt-tokens", "1", "--output", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no usable records" in err and f"{src}: --input:" in err
    assert not (tmp_path / "n").exists()


def test_dataset_types_are_the_schemas_and_generated_reads_as_custom(tmp_path, tok):
    from llmbuild.bench import cli_common
    from llmbuild.bench.datasets import DATASET_TYPES

    assert cli_common.DATASET_TYPES == DATASET_TYPES
    path = _write(tmp_path / "d.jsonl", [{"prompt": "hello there", "output_len": 3}])
    assert load_dataset(path, "generated", tok) == load_dataset(path, "custom", tok)


def test_bench_cli_defaults_are_the_schemas():
    """Every flag a config key sets has the schema's default (bench.*, gates.*, plot.slo_*,
    serve.ready_timeout); the static benchmark's request mix, which no key sets, the Workload's."""
    import argparse

    from llmbuild.bench import cli
    from llmbuild.schema import default

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="verb"))
    common = ["--base-url", "http://h:1/v1", "--tokenizer", "t", "--output", "o"]
    parsed = {
        "dynamic": parser.parse_args(["dynamic", "--data", "d", *common, "--records", "r"]),
        "static": parser.parse_args(["static", *common, "--records", "r"]),
        "gen": parser.parse_args(["generate-dataset", "--output", "o", "--tokenizer", "t"]),
    }
    dyn, static, gen = parsed
    expect = {
        (dyn, "request_rate"): tuple(default("bench.dynamic.request_rate")),
        (dyn, "num_prompts"): tuple(default("bench.dynamic.num_prompts")),
        (dyn, "dataset_type"): default("bench.dataset.type"),
        (static, "concurrency"): tuple(default("bench.static.concurrency")),
        (static, "output_len"): tuple(default("bench.static.output_len")),
        (static, "api"): Workload().api,
        (static, "output_mode"): Workload().output_mode,
        (static, "speculative"): Workload().speculative,
        (gen, "num_requests"): default("bench.dataset.num_requests"),
        (gen, "avg_output"): default("bench.dataset.avg_output"),
    }
    for key in ("max_concurrency", "api", "output_mode", "speculative", "lora_mix", "seed"):
        expect[dyn, key] = default(f"bench.dynamic.{key}")
    for key in ("max_prompt_tokens", "max_tokens", "output_len"):
        expect[dyn, key] = default(f"bench.dataset.{key}")
    for args in (dyn, static):
        expect[args, "gate_mode"] = default("gates.mode")
        expect[args, "ready_timeout"] = default("serve.ready_timeout")
        for key in ("max_failed_fraction", "min_rate_fraction", "max_lag_ms"):
            expect[args, key] = default(f"gates.{key}")
        for key in ("slo_ttft_ms", "slo_tpot_ms", "slo_e2el_ms"):
            expect[args, key] = default(f"plot.{key}")
    for (verb, key), value in expect.items():
        assert getattr(parsed[verb], key) == value, (verb, key)
