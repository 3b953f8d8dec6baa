"""What `make demo` ran, in a few lines: held-out accuracy and served dtype per variant, the
gates' verdicts, and the times the demo took (setup, the graph, re-runs). Standard library
only (runs in the driver).

    python scripts/demo_summary.py results/<model> [times.txt]
"""

import json
import sys
from pathlib import Path

model = Path(sys.argv[1])
summary = json.loads((model / "eval" / "summary.json").read_text())
parts = [
    f"{variant} {row['accuracy']:.3f} ({row.get('served_dtype') or 'dtype ?'})"
    for variant, row in summary.items()
]
print(f"held-out accuracy through the service (served dtype): {', '.join(parts)}")
verdicts = json.loads((model / "gates" / "summary.json").read_text())["verdicts"]
counts: dict[str, int] = {}
for v in verdicts:
    counts[v["status"]] = counts.get(v["status"], 0) + 1
print("gates: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
for v in verdicts:
    if v["status"] != "pass":
        print(f"  {v['gate']} {v['subject']}: {v['status']}: {v['detail']}")
if len(sys.argv) > 2 and Path(sys.argv[2]).is_file():
    for line in Path(sys.argv[2]).read_text().splitlines():
        print(line)
