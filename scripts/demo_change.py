"""The benchmark-parameter change `make demo` re-runs (and then undoes) to show what a change
costs: the config's last static-benchmark concurrency doubled. Writes the overlay and prints
the change. PyYAML and llmbuild's schema (runs in the driver).

    python scripts/demo_change.py config/config.yaml results/demo-bench-change.yaml
"""

import json
import sys
from pathlib import Path

import yaml

from llmbuild import schema

config = yaml.safe_load(Path(sys.argv[1]).read_text())
static = config.get("bench", {}).get("static", {})
before = list(static.get("concurrency") or schema.default("bench.static.concurrency"))
after = before[:-1] + [before[-1] * 2]
Path(sys.argv[2]).write_text(json.dumps({"bench": {"static": {"concurrency": after}}}) + "\n")
print(f"bench.static.concurrency {before} -> {after}")
