"""Snakemake adapter: collect per-variant accuracy results into one summary JSON."""

import json
from pathlib import Path

rows = {}
for path in snakemake.input:  # noqa: F821
    rec = json.loads(Path(path).read_text())
    rows[Path(path).parent.name] = {
        k: rec.get(k)
        for k in ("accuracy", "n", "correct", "failed_requests", "model", "served_dtype")
    }
out = Path(snakemake.output[0])  # noqa: F821
tmp = out.with_name(f".{out.name}.tmp")
tmp.write_text(json.dumps(rows, indent=2) + "\n")
tmp.replace(out)
