# Planning: the config is validated (schema, then the plan's cross-field, catalog and path
# checks) before any job is planned; a bad value stops here with one line naming the key.
# Every rule's inputs and flags come from llmbuild.wiring (one contract: a config key
# reaches its step as the flag named after it).
import os
import sys
from pathlib import Path

from snakemake.utils import validate

# The package's source, as the rules name it (their src= inputs): `src` when the working
# directory has it (a copy or a scratch tree linking it), so the inputs read the same there.
SRC_DIR = os.path.relpath(Path(workflow.basedir) / "src")
if (
    Path("src/llmbuild").resolve()
    == (Path(workflow.basedir) / "src/llmbuild").resolve()
):
    SRC_DIR = "src"
sys.path.insert(0, SRC_DIR)
from llmbuild.errors import UserError  # noqa: E402
from llmbuild import plan, schema  # noqa: E402
from llmbuild.wiring import Wiring  # noqa: E402
from llmbuild.wiring.models import Models  # noqa: E402

CONFIG_SOURCE = plan.display_path(
    (workflow.overwrite_configfiles or ["config/config.yaml"])[-1]
)
SCHEMA = Path(workflow.basedir) / "src" / "llmbuild" / "schema.yaml"
CATALOG = Path(workflow.basedir) / "config" / "catalog.yaml"

try:
    plan.check_config(config, schema.load(), CONFIG_SOURCE)
    validate(config, str(SCHEMA), set_default=True)
    # each model's own config (models:, or the one of model:), planned as a one-model graph
    CONFIGS = plan.plan_models(
        config,
        schema.load(),
        CATALOG,
        CONFIG_SOURCE,
        fill=lambda cfg: validate(cfg, str(SCHEMA), set_default=True),
    )
    # the cluster the profile names (Slurm's partition, its nodes): once, not in each job
    if workflow.is_main_process:
        plan.check_cluster(
            list(CONFIGS.values()), workflow.resource_settings, CONFIG_SOURCE
        )
except UserError as exc:
    sys.exit(f"llmbuild: error: {exc}")

# the rules call W; each call reaches the wiring of the job's {model} (llmbuild.wiring.models)
W = Models(
    {name: Wiring(cfg, src_dir=SRC_DIR) for name, cfg in CONFIGS.items()}, config
)


wildcard_constraints:
    model=r"[a-z0-9._-]+",
    phase=r"base|pretrain|sft|dpo",
    variant=r"[a-z0-9._-]+",
    consumer=r"eval|bench",
    scheme=W.scheme_pattern(),
    stack=r"[a-z0-9-]+",
    split=r"train|heldout|preference",
    sweep=r"[a-z0-9][a-z0-9._-]*",
    setting=r"[a-z0-9][a-z0-9._-]*",
    workload=r"[a-z0-9][a-z0-9._-]*",
    adapter=r"[a-z][a-z0-9_]*",
