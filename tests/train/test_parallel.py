"""Pipeline-parallel training under torchrun, as the train rule runs it with tp * pp > 1: two
ranks, an uneven split (1 + 3 layers of a 4-layer model), the same losses as one process, and
a checkpoint that records its split, has that layout on disk, loads into an unsplit model with
the weights one process trains, and converts back to HF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")
pytest.importorskip("transformers")

import synth  # noqa: E402
import tiny  # noqa: E402

pytestmark = pytest.mark.parity

ITERS = 4


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)


def _llmbuild(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmbuild", *args]


def _torchrun(nproc: int, *args: str) -> list[str]:
    """The train rule's launcher: the environment's torchrun, starting `-m llmbuild`."""
    exe = Path(sys.executable).parent / "torchrun"
    launcher = [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", "--nproc_per_node", str(nproc), "-m", "llmbuild", *args]


def _train(root: Path, name: str, *extra: str) -> list[str]:
    return [
        "train",
        "run",
        "--mode",
        "pretrain",
        "--input",
        str(root / "mg"),
        "--data",
        str(root / "pt"),
        "--output",
        str(root / name),
        "--train-log",
        str(root / f"{name}.jsonl"),
        "--train-iters",
        str(ITERS),
        "--lr",
        "3e-3",
        "--min-lr",
        "0",
        "--warmup-iters",
        "1",
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "4",
        "--seq-length",
        "32",
        "--seed",
        "5",
        "--threads",
        "1",
        *extra,
    ]


def _losses(path: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("pp")
    tiny.make_model(
        root / "hf",
        arch="llama",
        layers=4,
        vocab_size=128,
        hidden=64,
        inter=128,
        heads=2,
        kv_heads=1,
    )
    # the base converted with the same uneven split, as the hf2mg rule does
    r = _run(
        _llmbuild(
            "convert",
            "hf2mg",
            "--input",
            str(root / "hf"),
            "--output",
            str(root / "mg"),
            "--pp",
            "2",
            "--pp-layers",
            "1,3",
        )
    )
    assert r.returncode == 0, r.stderr[-2000:]
    synth.make_pretrain(root / "pt", docs=60)
    return root


@pytest.fixture(scope="module")
def trained(work):
    """The same run twice: one process, and two pipeline stages of 1 + 3 layers."""
    single = _run(_llmbuild(*_train(work, "single")))
    assert single.returncode == 0, single.stderr[-3000:]
    piped = _run(_torchrun(2, *_train(work, "piped", "--pp", "2", "--pp-layers", "1,3")))
    assert piped.returncode == 0, piped.stdout[-2000:] + piped.stderr[-3000:]
    return work


def test_uneven_pipeline_trains_like_one_process(trained):
    # the same model and batches: the pipeline computes the same losses as one process
    one, two = _losses(trained / "single.jsonl"), _losses(trained / "piped.jsonl")
    assert len(one) == len(two) == ITERS
    assert two == pytest.approx(one, rel=1e-4, abs=1e-5)
    assert two[-1] < two[0]

    out = trained / "piped"
    desc = json.loads((out / "llmbuild_model.json").read_text())
    assert (desc["tp"], desc["pp"], desc["extra"]["pp_layers"]) == (1, 2, [1, 3])
    ident = json.loads((out / "llmbuild_train.json").read_text())["args"]
    assert ident["pp"] == 2 and ident["pp_layers"] == [1, 3]
    single = json.loads((trained / "single" / "llmbuild_train.json").read_text())["args"]
    assert "pp_layers" not in single  # an even split keeps the identity it always had

    # on disk: stage 0 wrote layer 0, stage 1 layers 1..3 (each rank its own file)
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(out / f"iter_{ITERS:07d}")).read_metadata()
    files: dict[int, str] = {}
    for index, info in meta.storage_data.items():
        if index.fqn == "decoder.layers.self_attention.linear_proj.weight":
            files[int(index.offset[0])] = info.relative_path
    assert sorted(files) == [0, 1, 2, 3]
    assert files[1] == files[2] == files[3] != files[0]


def test_uneven_checkpoint_loads_at_tp1_pp1(trained):
    """Loaded into one unsplit model, the pipeline's checkpoint holds the weights one process
    trained (every layer of both stages moved from the base)."""
    import warnings

    from llmbuild.mcore import checkpoint as ckpt
    from llmbuild.mcore import device
    from llmbuild.mcore import model as M

    warnings.filterwarnings("ignore", category=UserWarning)
    device.init_backend("cpu", tp=1, pp=1, seed=1)
    try:
        weights = {}
        for name in ("mg", "single", "piped"):
            desc = M.load_description(trained / name)
            _, model = M.build_for_this_rank(desc, tp=1, pp=1, device="cpu")
            ckpt.load(trained / name, model)
            sd = model.state_dict()
            weights[name] = {k: v.detach().clone() for k, v in sd.items() if torch.is_tensor(v)}
    finally:
        device.shutdown()
    base, one, two = weights["mg"], weights["single"], weights["piped"]
    params = [k for k, v in one.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    layers = [k for k in params if k.startswith("decoder.layers.")]
    assert layers and set(params) <= set(two)
    for k in params:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    proj = "decoder.layers.{}.self_attention.linear_proj.weight"
    for i in range(4):
        assert not torch.equal(two[proj.format(i)], base[proj.format(i)]), i


def test_uneven_checkpoint_converts_to_hf(trained):
    """mg2hf checks it against its description (tp/pp from the files), writes a complete HF
    directory and loads that in transformers."""
    r = _run(
        _llmbuild(
            "convert",
            "mg2hf",
            "--input",
            str(trained / "piped"),
            "--hf-source",
            str(trained / "hf"),
            "--output",
            str(trained / "hf-piped"),
        )
    )
    assert r.returncode == 0, r.stderr[-2000:]
    from safetensors.torch import load_file

    before = load_file(str(trained / "hf" / "model.safetensors"))
    after = load_file(str(trained / "hf-piped" / "model.safetensors"))
    assert set(before) == set(after)
    for i in range(4):
        key = f"model.layers.{i}.self_attn.o_proj.weight"
        assert not torch.equal(before[key], after[key]), key


def test_split_not_matching_the_model_is_one_line(work):
    r = _run(_llmbuild(*_train(work, "bad", "--pp-layers", "1,2", "--pp", "2")))
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "--pp-layers" in lines[0] and "the model has 4 layers" in lines[0]


# --------------------------------------------------------------------------- without torchrun


def _args8():
    from llmbuild.mcore import model as M

    hf = dict(
        num_hidden_layers=8,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=128,
    )
    return M.describe(hf, "llama")


def test_any_split_becomes_a_layout_an_even_one_megatrons_default():
    from llmbuild.mcore import model as M

    assert M.pipeline_layout((4, 4)) is None and M.pipeline_layout((8,)) is None
    # middle stages of different sizes: beyond num_layers_in_first/last_pipeline_stage
    config = M.transformer_config(_args8(), pp=4, pp_layers=(1, 2, 3, 2))
    layout = config.pipeline_model_parallel_layout
    assert [layout.get_num_layers_to_build(pp_rank=r) for r in range(4)] == [1, 2, 3, 2]
    assert [layout.get_layer_offset(pp_rank=r) for r in range(4)] == [0, 1, 3, 6]
    assert (
        M.transformer_config(_args8(), pp=2, pp_layers=(4, 4)).pipeline_model_parallel_layout
        is None
    )


@pytest.mark.parametrize(
    ("pp", "split"),
    [(3, (1, 2, 3)), (3, (2, 6, 0)), (3, (4, 4))],  # sum != 8, an empty stage, 2 of 3 stages
)
def test_split_that_does_not_fit_the_model_is_refused(pp, split):
    from llmbuild.errors import UserError
    from llmbuild.mcore import model as M

    with pytest.raises(UserError, match="--pp-layers"):
        M.transformer_config(_args8(), pp=pp, pp_layers=split)
