from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/envs.smk"
include: "rules/cluster.smk"
include: "rules/data.smk"
include: "rules/model.smk"
include: "rules/convert.smk"
include: "rules/train.smk"
include: "rules/quantize.smk"
include: "rules/serve.smk"
include: "rules/eval.smk"
include: "rules/bench.smk"
include: "rules/plot.smk"


rule all:
    default_target: True
    input:
        W.final_targets(),
