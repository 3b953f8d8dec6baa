"""DPO on megatron-core: the sigmoid loss against a frozen reference, trained from a
checkpoint on preference pairs (chosen: the prompt reversed, rejected: a degenerate answer
repeating one token), raises the preferred answer's log-probability margin, in the log and on
held-out pairs the run never saw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")
pytest.importorskip("transformers")

import tiny  # noqa: E402

pytestmark = pytest.mark.parity

VOCAB = 64


def make_pairs(out: Path, *, pairs: int, seed: int) -> Path:
    """DPO shards in the `llmbuild data tokenize --kind dpo` layout, made from ids."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from llmbuild.data.preference import DPO_PREFIXES

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    builders = {
        k: IndexedDatasetBuilder(str(out / f"{v}.bin"), dtype=np.int32)
        for k, v in DPO_PREFIXES.items()
    }
    for _ in range(pairs):
        prompt = rng.integers(5, VOCAB, int(rng.integers(3, 10)))
        for side, answer in (("chosen", prompt[::-1]), ("rejected", np.full(len(prompt), 4))):
            ids = np.concatenate([[1], prompt, [2], answer, [3]]).astype(np.int32)
            labels = ids.copy()
            labels[: len(prompt) + 2] = -100
            builders[f"{side}_ids"].add_document(ids, [len(ids)])
            builders[f"{side}_labels"].add_document(labels, [len(labels)])
    for k, v in DPO_PREFIXES.items():
        builders[k].finalize(str(out / f"{v}.idx"))
    meta = {"kind": "dpo", "eod_id": 0, "pad_id": 0, "vocab_size": VOCAB, "prefixes": DPO_PREFIXES}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "llmbuild", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _dpo(root: Path, name: str, *extra: str) -> list[str]:
    return [
        "train", "run", "--mode", "dpo", "--input", str(root / "mg"), "--data",
        str(root / "pairs"), "--output", str(root / name), "--train-log",
        str(root / f"{name}.jsonl"), "--train-iters", "12", "--lr", "3e-3", "--min-lr", "3e-4",
        "--warmup-iters", "2", "--micro-batch-size", "4", "--global-batch-size", "8",
        "--seq-length", "32", "--seed", "3", "--threads", "2", "--beta", "0.5", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    tiny.make_model(
        root / "hf", arch="llama", layers=2, vocab_size=128, hidden=64, inter=128, heads=2,
        kv_heads=1,
    )  # fmt: skip
    r = _cli("convert", "hf2mg", "--input", str(root / "hf"), "--output", str(root / "mg"))
    assert r.returncode == 0, r.stderr[-2000:]
    make_pairs(root / "pairs", pairs=200, seed=0)
    make_pairs(root / "heldout", pairs=40, seed=1)
    r = _cli(*_dpo(root, "policy"))
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def margins(ckpt_dir: Path, pairs_dir: Path) -> torch.Tensor:
    """log p(chosen) - log p(rejected) of every pair under the checkpoint's model."""
    import warnings

    from llmbuild.mcore import checkpoint as ckpt
    from llmbuild.mcore import device
    from llmbuild.mcore import model as M
    from llmbuild.train import data as D
    from llmbuild.train import setup as S

    warnings.filterwarnings("ignore", category=UserWarning)
    device.init_backend("cpu", tp=1, pp=1, seed=1)
    try:
        _, model = M.build_for_this_rank(M.load_description(ckpt_dir), tp=1, pp=1, device="cpu")
        ckpt.load(ckpt_dir, model)
        model.eval()
        source = D.DpoSource(D.read_meta(pairs_dir), seq_length=32, seed=0)
        b = source.batch(0, source.n)
        tokens, pos, mask = S._inputs(torch.device("cpu"), b)
        with torch.no_grad():
            nll = model(tokens, pos, mask, labels=b["labels"])
        logp = -(nll * b["loss_mask"]).sum(-1)
    finally:
        device.shutdown()
    return logp[: source.n] - logp[source.n :]


def test_the_log_shows_the_reward_margin_rising(trained):
    log = [json.loads(x) for x in (trained / "policy.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == list(range(1, 13))
    assert log[0]["reward_margin"] == 0.0  # the policy starts as its reference
    assert log[0]["loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-4)
    late = log[-4:]
    assert min(x["reward_margin"] for x in late) > 0.5
    assert min(x["reward_accuracy"] for x in late) >= 0.9
    assert max(x["loss"] for x in late) < 0.5 * log[0]["loss"]
    ident = json.loads((trained / "policy" / "llmbuild_train.json").read_text())["args"]
    assert ident["mode"] == "dpo" and ident["beta"] == 0.5


def test_held_out_preferred_answers_gain_log_probability(trained):
    before = margins(trained / "mg", trained / "heldout")
    after = margins(trained / "policy", trained / "heldout")
    assert after.mean() > before.mean() + 2.0
    assert (after > before).float().mean() >= 0.9


def test_dpo_loss_at_the_reference_and_its_gradient():
    from llmbuild.train.setup import dpo_loss

    nll = torch.tensor([[1.0, 2.0], [3.0, 1.0]], requires_grad=True)  # chosen, rejected rows
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, n, report = dpo_loss(nll, nll.detach(), mask, beta=0.1)
    assert int(n) == 1 and loss.item() == pytest.approx(0.6931472, rel=1e-6)
    assert report["reward_margin"].tolist() == [0.0, 1.0]
    loss.backward()
    # lowering the chosen answer's NLL and raising the rejected one's lowers the loss
    assert (nll.grad[0] > 0).all() and nll.grad[1, 0] < 0 and nll.grad[1, 1] == 0


def test_dpo_with_a_pipeline_is_one_line(trained):
    r = _cli(*_dpo(trained, "piped", "--pp", "2"))
    assert r.returncode != 0 and "--pp" in r.stderr and "DPO trains with pp 1" in r.stderr
    assert "Traceback" not in r.stderr
