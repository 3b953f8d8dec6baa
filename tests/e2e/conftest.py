"""Shared by the end-to-end tests: the Qwen2.5 stand-in the hf scenario reads, and that
scenario's build, started beside the default's (tests/e2e/hf_scenario.py)."""

from pathlib import Path

import hf_scenario
import pytest

ROOT = Path(__file__).resolve().parents[2]
# the modules whose fixtures build the default graph in the repository
DEFAULT_BUILDERS = {"test_audit.py", "test_demo.py", "test_gates.py"}
# the default's SFT model converted back to HF: its graph's two-core part is over
DEFAULT_TRAINED = ROOT / "results/tiny-llama/sft/hf/config.json"


@pytest.fixture(scope="session")
def qwen25_stand_in() -> Path:
    """results/models/qwen2.5 (hf_scenario.make_stand_in)."""
    return hf_scenario.make_stand_in()


@pytest.fixture(scope="session")
def hf_scenario_build() -> hf_scenario.Build:
    """The hf scenario's build; `.result()` waits for it."""
    return hf_scenario.BUILD


@pytest.fixture(scope="session", autouse=True)
def _hf_scenario_beside_the_default(request):
    """When this session runs the hf scenario's tests and builds the default too, the
    scenario's build starts beside the default's once the default's model is trained (or
    when its own tests come); whatever is left of it stops with the session."""
    files = {item.path.name for item in request.session.items}
    if "test_scenario_hf.py" in files and files & DEFAULT_BUILDERS:
        hf_scenario.make_device_check()
        hf_scenario.BUILD.start(after=DEFAULT_TRAINED)
    yield
    hf_scenario.BUILD.stop()
