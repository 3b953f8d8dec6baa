import pytest

from llmbuild.data.synth import TaskSpec, corpus_documents, task_split
from llmbuild.errors import UserError

pytestmark = pytest.mark.unit


def test_corpus_is_deterministic_and_seeded():
    a = list(corpus_documents(50, seed=1))
    assert a == list(corpus_documents(50, seed=1))
    assert a != list(corpus_documents(50, seed=2))
    assert len(a) == 50 and all(doc.endswith(".") for doc in a)


@pytest.mark.parametrize("task", ["uppercase", "reverse", "sort", "missing"])
def test_task_answers_are_exact_and_split_is_disjoint(task):
    train, heldout = task_split(TaskSpec(task, num_train=300, num_heldout=50, seed=3))
    assert len(train) == 300 and len(heldout) == 50
    prompts = {(e.instruction, e.input) for e in train}
    assert not prompts & {(e.instruction, e.input) for e in heldout}
    for ex in train + heldout:
        letters = ex.input.split(" ")
        want = {
            "uppercase": [c.upper() for c in letters],
            "reverse": letters[::-1],
            "sort": sorted(letters),
            "missing": sorted(set("0123456789") - set(letters)),
        }[task]
        assert ex.output == " ".join(want)


def test_impossible_split_is_a_clear_error():
    with pytest.raises(UserError, match="fewer than"):
        task_split(TaskSpec("sort", num_train=5000, num_heldout=10, min_len=1, max_len=1))


def test_bad_task_name():
    with pytest.raises(UserError, match="unknown task 'add'"):
        TaskSpec("add")
