"""Benchmark datasets: generated (clipped-normal lengths, exact token counts) and loaders for
ShareGPT JSON, Alpaca JSON and human-eval JSONL, with the seeds' length filters.

Every entry is a prompt with its token length in the served model's tokenizer and an output
length in tokens. The dataset file this module writes (``generated``; the same format written
by other means is ``custom``) is JSONL, one entry a line:

    {"prompt": "...", "prompt_len": 37, "output_len": 16}

Loading (``load_dataset``), per type:

- ``generated``, ``custom``: the file above; ``prompt_len`` is recounted with the tokenizer.
- ``sharegpt``: a JSON list of ``{"conversations": [{"from": "human", "value": ...},
  {"from": "gpt", "value": ...}, ...]}``; the first turn is the prompt and the second the
  reference completion (records with fewer than two turns are skipped), as vLLM does.
- ``alpaca``: a JSON list (or JSONL) of ``{"instruction", "input", "output"}``; the prompt is
  the instruction, plus ``"\\n" + input`` when input is non-empty; the completion is output.
- ``human-eval``: JSONL of ``{"task_id", "prompt", "canonical_solution", ...}``; the
  completion is the canonical solution.

Output length: ``--output-len`` when given (the seeds' speculative benchmark runs human-eval
with a fixed one), else the completion's token count. Filters, in this order: empty prompt
or zero output length, ``prompt_len > max_prompt_tokens``, ``prompt_len + output_len >
max_tokens`` (the seeds' ``--max-prompt-tokens`` and ``--max-tokens``); the kept entries keep
the file's order. Lengths count like the server: the prompt with the tokenizer's special
tokens (BOS), the completion without.

Sampling (``assign_prompts``) is seeded: one permutation of the dataset, cells taking
consecutive slices of it, so different cells get different prompts (no accidental prefix-cache
hits across request rates) until the dataset runs out; then a new permutation starts and the
cell's ``reused_prompts`` column counts the repeats.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from llmbuild.data.formats import alpaca_prompt
from llmbuild.errors import UserError

DATASET_TYPES = ("generated", "custom", "sharegpt", "alpaca", "human-eval")
_LENGTH_STREAM, _PROMPT_STREAM, _ORDER_STREAM = 0x1E4, 0x960, 0x0D3


@dataclass(frozen=True)
class LengthDist:
    """Token lengths ~ Normal(mean, std), rounded and clipped to [min, max] (the seeds'
    generate_dataset.py: values beyond the bounds land on the bounds)."""

    min: int
    max: int
    mean: float
    std: float
    name: str = "input"

    def __post_init__(self) -> None:
        flag = f"--{{}}-{self.name}"
        if self.min < 1:
            raise UserError(f"must be >= 1, got {self.min}", field=flag.format("min"))
        if self.max < self.min:
            raise UserError(
                f"{self.max} is below --min-{self.name} {self.min}", field=flag.format("max")
            )
        if not self.min <= self.mean <= self.max:
            raise UserError(
                f"{self.mean:g} is outside [--min-{self.name}, --max-{self.name}] = "
                f"[{self.min}, {self.max}]",
                field=flag.format("avg"),
            )
        if not self.std >= 0:
            raise UserError(f"must be >= 0, got {self.std}", field=flag.format("std"))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x = rng.normal(self.mean, self.std, size=n) if self.std > 0 else np.full(n, self.mean)
        return np.clip(np.rint(x), self.min, self.max).astype(np.int64)


@dataclass(frozen=True)
class Entry:
    prompt: str
    prompt_len: int
    output_len: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def generate(
    maker: Any,
    num_requests: int,
    input_dist: LengthDist,
    output_dist: LengthDist,
    seed: int = 0,
) -> list[Entry]:
    """``num_requests`` entries with random prompts of exactly the sampled token lengths.

    ``maker`` is a ``prompts.PromptMaker``. Lengths depend only on the seed and the
    distributions (not on the tokenizer); prompts on the seed and the tokenizer."""
    if num_requests < 1:
        raise UserError(f"must be >= 1, got {num_requests}", field="--num-requests")
    if input_dist.min <= maker.n_special:
        raise UserError(
            f"{input_dist.min} leaves no room for text after the tokenizer's "
            f"{maker.n_special} special token(s); raise it",
            field="--min-input",
        )
    lrng = np.random.default_rng([seed, _LENGTH_STREAM])
    ins = input_dist.sample(num_requests, lrng)
    outs = output_dist.sample(num_requests, lrng)
    prng = np.random.default_rng([seed, _PROMPT_STREAM])
    return [Entry(maker.make(int(i), prng), int(i), int(o)) for i, o in zip(ins, outs, strict=True)]


def write_jsonl(entries: Sequence[Entry], fh: IO[str]) -> None:
    for e in entries:
        fh.write(json.dumps(e.as_dict(), ensure_ascii=False) + "\n")


# --- loaders --------------------------------------------------------------------------------


def read_records(path: str | Path, flag: str = "--data") -> list[Any]:
    """A JSON list, or JSON Lines (one object per line); errors name the file and line (and
    ``flag``, the option that named the file, when it cannot be read)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("no such dataset file", path=p, field=flag) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read: {exc}", path=p, field=flag) from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"invalid JSON: {exc}", path=p) from None
        return list(data)
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"line {n}: invalid JSON: {exc.msg}", path=p) from None
    return out


def _text(rec: Any, key: str, where: str) -> str:
    if not isinstance(rec, dict) or key not in rec:
        raise UserError(f"{where}: missing field {key!r}")
    value = rec[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: field {key!r} is not a string")
    return value


def extract(kind: str, rec: Any, where: str) -> tuple[str, str | None, int | None] | None:
    """(prompt, completion or None, given output length or None); None skips the record."""
    if kind == "sharegpt":
        conv = rec.get("conversations") if isinstance(rec, dict) else None
        if not isinstance(conv, list):
            raise UserError(f"{where}: missing list 'conversations' (is this ShareGPT?)")
        if len(conv) < 2:
            return None
        return _text(conv[0], "value", where), _text(conv[1], "value", where), None
    if kind == "alpaca":
        _text(rec, "instruction", where)
        return alpaca_prompt(rec), _text(rec, "output", where), None
    if kind == "human-eval":
        return _text(rec, "prompt", where), _text(rec, "canonical_solution", where), None
    if kind in ("generated", "custom"):
        n = rec.get("output_len") if isinstance(rec, dict) else None
        if not isinstance(n, int) or isinstance(n, bool):
            raise UserError(f"{where}: missing integer field 'output_len'")
        return _text(rec, "prompt", where), None, n
    raise UserError(
        f"unknown dataset type {kind!r}; use one of {', '.join(DATASET_TYPES)}",
        field="--dataset-type",
    )


@dataclass
class LoadReport:
    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def __str__(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.dropped.items()))
        return f"kept {self.kept} of {self.total} records" + (f" (dropped: {why})" if why else "")


def load_dataset(
    path: str | Path,
    kind: str,
    tokenizer: Any,
    *,
    max_prompt_tokens: int | None = None,
    max_tokens: int | None = None,
    output_len: int | None = None,
    flag: str = "--data",
) -> tuple[list[Entry], LoadReport]:
    """Entries of a dataset file with token lengths in ``tokenizer`` (a tokenizers.Tokenizer),
    filtered as the module docstring says; deterministic (no sampling here). ``flag`` is the
    option that named the file, for the error when nothing is left."""
    if kind not in DATASET_TYPES:
        raise UserError(
            f"unknown dataset type {kind!r}; use one of {', '.join(DATASET_TYPES)}",
            field="--dataset-type",
        )
    for limit, v in (
        ("--max-prompt-tokens", max_prompt_tokens),
        ("--max-tokens", max_tokens),
        ("--output-len", output_len),
    ):
        if v is not None and v < 1:
            raise UserError(f"must be >= 1, got {v}", field=limit)
    records = read_records(path, flag)
    report = LoadReport(total=len(records))
    parsed = []
    for n, rec in enumerate(records, 1):
        try:
            got = extract(kind, rec, f"record {n}")
        except UserError as exc:
            raise UserError(str(exc), path=path) from None
        if got is None:
            report.dropped["with fewer than 2 turns"] += 1
        else:
            parsed.append(got)
    prompt_ids = tokenizer.encode_batch([p for p, _, _ in parsed], add_special_tokens=True)
    completions = [c or "" for _, c, _ in parsed]
    completion_ids = (
        tokenizer.encode_batch(completions, add_special_tokens=False)
        if output_len is None and any(completions)
        else [None] * len(parsed)
    )
    entries = []
    for (prompt, _, given), p_enc, c_enc in zip(parsed, prompt_ids, completion_ids, strict=True):
        p_len = len(p_enc.ids)
        if output_len is not None:
            o_len = output_len
        elif given is not None:
            o_len = given
        else:
            o_len = len(c_enc.ids) if c_enc is not None else 0
        if not prompt.strip() or o_len < 1:
            report.dropped["empty prompt or output"] += 1
        elif max_prompt_tokens is not None and p_len > max_prompt_tokens:
            report.dropped["over --max-prompt-tokens"] += 1
        elif max_tokens is not None and p_len + o_len > max_tokens:
            report.dropped["over --max-tokens"] += 1
        else:
            entries.append(Entry(prompt, p_len, o_len))
    report.kept = len(entries)
    if not entries:
        raise UserError(f"no usable records: {report}", path=path, field=flag)
    return entries, report


def assign_prompts(
    n_entries: int, counts: Sequence[int], seed: int = 0
) -> list[list[tuple[int, bool]]]:
    """Per cell, ``counts[i]`` (entry index, reused) pairs: consecutive slices of seeded
    permutations of the dataset; ``reused`` marks an entry already sent earlier in the run."""
    if n_entries < 1:
        raise UserError("the dataset is empty", field="--data")
    order: list[int] = []
    passes = 0
    cells = []
    pos = 0
    for count in counts:
        while len(order) < pos + count:
            perm = np.random.default_rng([seed, _ORDER_STREAM, passes]).permutation(n_entries)
            order.extend(int(i) for i in perm)
            passes += 1
        cells.append([(order[k], k >= n_entries) for k in range(pos, pos + count)])
        pos += count
    return cells
