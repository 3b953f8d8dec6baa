"""Gates that judge figures other steps wrote: quantized accuracy against its source, and the
training log's losses. Pure functions of parsed inputs, so each is unit-tested directly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError
from llmbuild.gates.verdict import Verdict, judge


def _accuracy(path: str | Path) -> dict[str, Any]:
    try:
        rec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError("accuracy file not found", path=path) from None
    except (OSError, ValueError) as exc:
        raise UserError(f"not JSON: {exc}", path=path) from None
    if not isinstance(rec, dict) or not isinstance(rec.get("accuracy"), (int, float)):
        raise UserError("no numeric 'accuracy'; is this an `llmbuild eval` result?", path=path)
    return rec


def quant_accuracy(
    quantized: str | Path,
    reference: str | Path,
    max_drop: float,
    *,
    subject: str | None = None,
    reference_name: str | None = None,
) -> Verdict:
    """Held-out accuracy of a quantized variant within ``max_drop`` of the model it came from."""
    if not 0 <= max_drop <= 1:
        raise UserError(f"must be in [0, 1], got {max_drop}", field="gates.quant_max_drop")
    q, r = _accuracy(quantized), _accuracy(reference)
    name = subject or str(q.get("model") or Path(quantized).parent.name)
    ref = reference_name or str(r.get("model") or Path(reference).parent.name)
    if q.get("n") != r.get("n"):
        raise UserError(
            f"evaluated on {q.get('n')} examples but {ref} on {r.get('n')}; evaluate both on "
            "the same held-out split",
            path=quantized,
        )
    drop = float(r["accuracy"]) - float(q["accuracy"])
    ok = drop <= max_drop + 1e-12
    return Verdict(
        gate="quant_accuracy",
        subject=name,
        status=judge(ok),
        metric="accuracy drop",
        figure=round(drop, 6),
        threshold=max_drop,
        detail=(
            f"{name} accuracy {q['accuracy']:.4f} vs {ref} {r['accuracy']:.4f} on {q.get('n')} "
            f"held-out examples ({'within' if ok else 'beyond'} the allowed drop)"
        ),
        figures={
            "accuracy": float(q["accuracy"]),
            "reference_accuracy": float(r["accuracy"]),
            "reference": ref,
            "n": q.get("n"),
        },
    )


def train_loss(log: str | Path, iters: int | None = None, *, subject: str | None = None) -> Verdict:
    """Every step of a training log present once, in order, with a finite loss."""
    path = Path(log)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise UserError("training log not found", path=path) from None
    steps: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            steps.append(json.loads(line))
        except ValueError:
            raise UserError("not JSON; is this a train_log.jsonl?", path=f"{path}:{n}") from None
    name = subject or path.parent.name
    bad = next(
        (
            s
            for s in steps
            if not isinstance(s.get("loss"), (int, float)) or not math.isfinite(s["loss"])
        ),
        None,
    )
    numbered = [s.get("step") for s in steps]
    expected = list(range(numbered[0], numbered[0] + len(steps))) if steps else []
    problems = []
    if not steps:
        problems.append("no steps logged")
    if bad is not None:
        problems.append(f"loss {bad.get('loss')!r} at step {bad.get('step')}")
    if steps and numbered != expected:
        problems.append("steps are not consecutive (a resumed run logged twice?)")
    if iters is not None and steps and numbered[-1] != iters:
        problems.append(f"last step {numbered[-1]}, expected {iters}")
    final = steps[-1].get("loss") if steps else None
    return Verdict(
        gate="train_loss",
        subject=name,
        status=judge(not problems),
        metric="final loss",
        figure=final if isinstance(final, (int, float)) else None,
        threshold=None,
        detail="; ".join(problems) or f"{len(steps)} steps, every loss finite",
        figures={
            "steps": len(steps),
            "first_loss": steps[0].get("loss") if steps else None,
            "tokens": steps[-1].get("tokens") if steps else None,
        },
    )
