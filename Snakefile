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


# Bookkeeping that takes a second (synthetic inputs, verdicts, summaries, plots, the audit
# page, MindIE's config) runs on the submitting host under a cluster executor: as a cluster job
# each would wait for its allocation and start Snakemake again, which on Slurm costs 5 to 10 s
# per job along the graph's chain. Everything that computes (tokenizing, converting and its
# parity checks, training, quantizing, serving, evaluating, benchmarking, the device check)
# goes to the cluster.
localrules:
    all,
    synth_corpus,
    synth_task,
    synth_lora_task,
    dataset_generate,
    gate_train,
    gate_train_lora,
    gate_quant,
    eval_summary,
    gate_summary,
    plot_loss,
    plot_bench,
    plot_dynamic,
    plot_compare,
    plot_sweep,
    audit_page,
    mindie_config,


rule all:
    default_target: True
    input:
        W.final_targets(),
