"""The embedded default's inputs, made from nothing but a seed.

- A pretraining corpus of templated English-like documents, with letter, digit and word
  sequences so the tokenizer and the model see the symbols the task uses.
- An instruction task with one exact answer, small enough for a tiny model to learn on a
  CPU in minutes, split into train and held-out with no prompt in both.

Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from llmbuild.errors import UserError

_SUBJECTS = [
    "the model",
    "a student",
    "the robot",
    "my friend",
    "the teacher",
    "a small cat",
    "the engineer",
    "our team",
    "the old man",
    "a bird",
    "the river",
    "this machine",
]
_VERBS = [
    "reads",
    "writes",
    "sees",
    "builds",
    "likes",
    "finds",
    "moves",
    "counts",
    "sorts",
    "carries",
    "opens",
    "learns",
]
_OBJECTS = [
    "a book",
    "the letters",
    "some numbers",
    "the door",
    "a long list",
    "the river",
    "a green box",
    "the words",
    "a red apple",
    "the map",
    "a new song",
    "the stars",
]
_PLACES = [
    "in the morning",
    "at night",
    "near the sea",
    "on the table",
    "in the city",
    "after lunch",
    "before the rain",
    "with great care",
    "every day",
    "in the garden",
]
_LOWER = string.ascii_lowercase
_UPPER = string.ascii_uppercase


def _spaced(chars: list[str]) -> str:
    return " ".join(chars)


def _sentence(rng: random.Random) -> str:
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
    if rng.random() < 0.6:
        s += f" {rng.choice(_PLACES)}"
    return s[0].upper() + s[1:] + "."


def _symbols(rng: random.Random) -> str:
    kind = rng.randrange(4)
    n = rng.randint(3, 10)
    if kind == 0:
        letters = [rng.choice(_LOWER) for _ in range(n)]
        capitals = _spaced([c.upper() for c in letters])
        return f"The letters are {_spaced(letters)}, or in capitals {capitals}."
    if kind == 1:
        return f"Count with me: {_spaced([str(i) for i in range(rng.randint(0, 5), 10)])}."
    if kind == 2:
        letters = [rng.choice(_UPPER) for _ in range(n)]
        return f"Capitals: {_spaced(letters)}, small: {_spaced([c.lower() for c in letters])}."
    start = rng.randrange(26 - 3)
    return f"The alphabet goes {_spaced(list(_LOWER[start : start + n]))} and on."


def corpus_documents(num_docs: int, seed: int) -> Iterator[str]:
    """Yield ``num_docs`` documents of 2-8 sentences each."""
    rng = random.Random(seed)
    for _ in range(num_docs):
        parts = [
            _symbols(rng) if rng.random() < 0.35 else _sentence(rng)
            for _ in range(rng.randint(2, 8))
        ]
        yield " ".join(parts)


@dataclass(frozen=True)
class Example:
    instruction: str
    input: str
    output: str

    def as_alpaca(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


def _uppercase(rng: random.Random, min_len: int, max_len: int) -> Example:
    letters = [rng.choice(_LOWER) for _ in range(rng.randint(min_len, max_len))]
    return Example(
        "Convert the letters to capitals.", _spaced(letters), _spaced([c.upper() for c in letters])
    )


def _reverse(rng: random.Random, min_len: int, max_len: int) -> Example:
    letters = [rng.choice(_LOWER) for _ in range(rng.randint(min_len, max_len))]
    return Example("Reverse the letters.", _spaced(letters), _spaced(letters[::-1]))


def _sort(rng: random.Random, min_len: int, max_len: int) -> Example:
    digits = rng.sample(string.digits, rng.randint(min_len, min(max_len, 10)))
    return Example("Sort the digits.", _spaced(digits), _spaced(sorted(digits)))


def _missing(rng: random.Random, min_len: int, max_len: int) -> Example:
    digits = rng.sample(string.digits, rng.randint(min_len, min(max_len, 9)))
    gone = sorted(set(string.digits) - set(digits))
    return Example("Which digits are missing?", _spaced(digits), _spaced(gone))


TASKS: dict[str, Callable[[random.Random, int, int], Example]] = {
    "uppercase": _uppercase,
    "reverse": _reverse,
    "sort": _sort,
    "missing": _missing,
}


@dataclass(frozen=True)
class TaskSpec:
    name: str = "uppercase"
    num_train: int = 4000
    num_heldout: int = 200
    min_len: int = 3
    max_len: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise UserError(
                f"unknown task {self.name!r}; choose one of {sorted(TASKS)}", field="task"
            )
        if not 1 <= self.min_len <= self.max_len:
            raise UserError(
                f"need 1 <= min_len <= max_len, got {self.min_len}..{self.max_len}",
                field="task.min_len",
            )
        if self.num_train < 1 or self.num_heldout < 1:
            raise UserError("num_train and num_heldout must be >= 1", field="task")


def task_split(spec: TaskSpec) -> tuple[list[Example], list[Example]]:
    """Distinct examples, split into (train, heldout) with no prompt in both."""
    rng = random.Random(spec.seed)
    make = TASKS[spec.name]
    seen: set[str] = set()
    out: list[Example] = []
    want = spec.num_train + spec.num_heldout
    attempts = 0
    while len(out) < want:
        attempts += 1
        if attempts > 50 * want:
            raise UserError(
                f"task {spec.name!r} has fewer than {want} distinct examples for lengths "
                f"{spec.min_len}..{spec.max_len}; lower num_train/num_heldout",
                field="task",
            )
        ex = make(rng, spec.min_len, spec.max_len)
        key = ex.instruction + "\n" + ex.input
        if key in seen:
            continue
        seen.add(key)
        out.append(ex)
    return out[spec.num_heldout :], out[: spec.num_heldout]
