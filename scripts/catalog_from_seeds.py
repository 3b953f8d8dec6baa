"""Ops script: regenerate config/catalog.yaml from the seeds' tables (shared/reference/*.csv).

    python scripts/catalog_from_seeds.py ../shared/reference config/catalog.yaml

The catalog is committed; rerun this only when the seeds' tables change.
"""

import csv
import re
import sys
from pathlib import Path

import yaml

SCHEMES = ["fp16_bf16", "w4a16", "w8a8", "w8a16", "kv_cache_int8"]
# Architecture families by catalog name, so the graph can tell what a conversion needs.
FAMILY = [
    (r"^llama", "llama"),
    (r"^yi-", "llama"),
    (r"^qwen2", "qwen2"),
    (r"^qwen1\.5", "qwen2"),
    (r"^mistral", "mistral"),
    (r"^mixtral", "mixtral"),
]


def key(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]", "-", name.strip().lower())


def main(ref: Path, out: Path) -> None:
    models: dict[str, dict] = {}
    with open(ref / "infer_support.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            m = models.setdefault(key(row["model"]), {})
            m["quantization"] = {s: row[s].strip() == "yes" for s in SCHEMES}
            m["weights"] = row["weights"].strip()
    with open(ref / "train_parallel.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            m = models.setdefault(key(row["model"]), {})
            m.setdefault("train", []).append(
                {
                    "strategy": row["strategy"],
                    "seq_len": int(row["seq_len"]),
                    "tp": int(row["tp"]),
                    "pp": int(row["pp"]),
                    "mbs": int(row["mbs"]),
                    "nodes": int(row["nodes"]),
                    "npus_per_node": int(row["npus_per_node"]),
                }
            )
    for name, m in models.items():
        fam = next((f for pat, f in FAMILY if re.search(pat, name)), None)
        if fam:
            m["family"] = fam
    models["tiny-llama"] = {
        "family": "llama",
        "quantization": {s: True for s in SCHEMES},
        "weights": "made locally by the graph (llmbuild model tiny)",
        "train": [
            {
                "strategy": s,
                "seq_len": 512,
                "tp": 1,
                "pp": 1,
                "mbs": 16,
                "nodes": 1,
                "npus_per_node": 1,
            }
            for s in ("full", "lora")
        ],
    }
    header = (
        "# The model catalog: recommended training layouts and quantization support per\n"
        "# model, from the seeds' tables (shared/reference/*.csv) plus the tiny default.\n"
        "# Regenerate with scripts/catalog_from_seeds.py; do not edit by hand.\n"
    )
    out.write_text(
        header
        + yaml.safe_dump(
            {"models": dict(sorted(models.items()))},
            sort_keys=False,
            width=100,
            default_flow_style=None,
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
