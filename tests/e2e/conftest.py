"""Shared by the end-to-end tests: the Qwen2.5 stand-in the hf scenario reads."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def qwen25_stand_in() -> Path:
    """results/models/qwen2.5: a random-weight Qwen2.5 with the family's real tokenizer and
    template, made by tests/families.py as the scenario's README says a user would."""
    model = ROOT / "results/models/qwen2.5"
    if not (model / "model.safetensors").is_file():
        python = ROOT / ".envs/train/bin/python"
        subprocess.run(
            [str(python), "tests/families.py", "--family", "qwen2.5", "--out", str(model)],
            cwd=ROOT,
            check=True,
            timeout=600,
        )
    return model
