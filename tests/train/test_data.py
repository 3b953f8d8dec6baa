"""Batch construction: SFT packing, shifting, masking; the meta.json contract; arguments."""

from __future__ import annotations

import json

import pytest

from llmbuild.errors import UserError
from llmbuild.train import data as D
from llmbuild.train.resume import TrainArgs, fingerprint, partial_dir

pytestmark = pytest.mark.unit


def test_pack_rows_first_fit_in_order():
    # lengths in tokens; each takes n - 1 positions; seq 10
    lengths = [5, 6, 4, 11, 1, 3]
    rows = D.pack_rows(lengths, [0, 1, 2, 3, 4, 5], 10)
    assert rows == [[0, 1], [2], [3], [5]]  # 4+5 | 3 (+10 would overflow) | 10 | 2; len-1 skipped


def test_sft_row_shifts_and_masks():
    ex1 = ([1, 7, 8, 2, 9, 3], [-100, -100, -100, -100, 9, 3])
    ex2 = ([1, 5, 2, 6], [-100, -100, -100, 6])
    tokens, targets, mask, segs = D.build_sft_row([ex1, ex2], 10, pad_id=0)
    assert tokens == [1, 7, 8, 2, 9, 1, 5, 2, 0, 0]
    # position i predicts labels[i + 1]; -100 -> masked (target 0)
    assert targets == [0, 0, 0, 9, 3, 0, 0, 6, 0, 0]
    assert mask == [0, 0, 0, 1, 1, 0, 0, 1, 0, 0]
    assert segs == [1, 1, 1, 1, 1, 2, 2, 2, 0, 0]


def test_packed_attention_mask_is_block_causal():
    torch = pytest.importorskip("torch")
    m = D.packed_attention_mask(torch.tensor([[1, 1, 2, 2, 0]]))
    allowed = (~m[0, 0]).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1],
    ]


def test_read_meta_errors_name_file_and_field(tmp_path):
    with pytest.raises(UserError, match="meta.json"):
        D.read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(
        json.dumps({"kind": "sft", "eod_id": 0, "pad_id": 0, "vocab_size": 9, "prefixes": {}})
    )
    with pytest.raises(UserError, match="prefixes"):
        D.read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(
        json.dumps(
            {
                "kind": "pretrain",
                "eod_id": 0,
                "pad_id": 0,
                "vocab_size": 9,
                "prefixes": {"text": "t"},
            }
        )
    )
    with pytest.raises(UserError, match="t.bin"):
        D.read_meta(tmp_path)
    (tmp_path / "t.bin").write_bytes(b"")
    (tmp_path / "t.idx").write_bytes(b"")
    meta = D.read_meta(tmp_path)
    assert meta.kind == "pretrain" and meta.prefix("text") == str(tmp_path / "t")


def _args(**kw):
    base = dict(
        mode="pretrain",
        input="a",
        data="d",
        output="s",
        train_log="l.jsonl",
        train_iters=10,
        lr=1e-3,
    )
    return TrainArgs(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "flag"),
    [
        ({"mode": "lora"}, "--mode"),
        ({"train_iters": 0}, "--train-iters"),
        ({"min_lr": 1.0}, "--min-lr"),
        ({"warmup_iters": 10}, "--warmup-iters"),
        ({"micro_batch_size": 3, "global_batch_size": 4}, "--global-batch-size"),
        ({"output": "a"}, "--output"),
        ({"seq_length": 1}, "--seq-length"),
        ({"pp": 2, "pp_layers": (4,)}, "--pp-layers"),
        ({"pp": 2, "pp_layers": (0, 4)}, "--pp-layers"),
    ],
)
def test_train_args_reject(kw, flag):
    with pytest.raises(UserError, match=flag):
        _args(**kw)


def test_identity_ignores_paths_and_logging_only():
    a, b = _args(save_interval=5, log_interval=1), _args(output="t", train_log="m", threads=2)
    assert a.identity() == b.identity()
    assert a.identity() != _args(seed=7).identity()
    assert partial_dir("out/ckpt/") == partial_dir("out/ckpt")


def test_identity_keeps_the_pipeline_split():
    even, uneven = _args(pp=2), _args(pp=2, pp_layers=[1, 3])
    assert "pp_layers" not in even.identity()  # the identity runs without a split always had
    assert uneven.pp_layers == (1, 3) and uneven.identity()["pp_layers"] == [1, 3]
    assert uneven.identity() != even.identity() != _args(pp=2, pp_layers=(3, 1)).identity()
    # stored as JSON in <save>.partial and compared with the next run's: it must round-trip
    assert json.loads(json.dumps(uneven.identity())) == uneven.identity()


def test_fingerprint_changes_with_content(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    one = fingerprint(tmp_path)
    (tmp_path / "meta.json").write_text("{ }")
    assert fingerprint(tmp_path) != one


def test_train_run_knobs_default_to_the_schema():
    from llmbuild.cli import build_parser
    from llmbuild.schema import default, node

    paths = ["--input", "a", "--data", "d", "--output", "o", "--train-log", "l.jsonl"]
    args = build_parser("train").parse_args(["train", "run", "--mode", "sft", *paths])
    for key in node("train.sft")["properties"]:
        dest = "train_iters" if key == "iters" else key
        expected = default(f"train.sft.{key}")
        assert getattr(args, dest) == expected == default(f"train.pretrain.{key}"), key
    for key in ("device", "dp", "pp_layers", "save_interval"):
        assert getattr(args, key) == default(f"train.{key}")
    # unset in the schema = planned from the catalog; the command alone runs one process
    assert default("train.tp") is None and (args.tp, args.pp) == (1, 1)
    assert (args.input, args.output, args.train_log) == ("a", "o", "l.jsonl")


def test_fingerprint_ignores_the_training_log(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"weights")
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "elapsed": 0.5}\n')
    one = fingerprint(tmp_path)
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "elapsed": 0.7}\n')
    assert fingerprint(tmp_path) == one
