"""The train tests' helpers on sys.path: synth.py (tiny indexed datasets) here, tiny.py (tiny
HF models) in tests/convert."""

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(HERE.parent / "convert")]
