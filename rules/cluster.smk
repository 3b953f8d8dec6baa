# The environment check before device jobs: what the node has (GPUs from nvidia-smi, NPUs from
# npu-smi, or the CPU's ISA flags, cores and memory), as JSON. Every device job (train, serve)
# lists the check of its device among its inputs, so a job placed on a node without that
# device stops here with one line, in seconds. `ancient`: a check redone on another node does
# not rerun the work that depends on it. The check describes where jobs run, not a model, so
# it lives beside the environments (.envs/checks/; results/checks/ with external ones).


rule device_check:
    input:
        src=W.sources("cluster"),
        env=W.env_marker("train"),
    output:
        W.device_checks(),
    log:
        "logs/checks/{device}.log",
    wildcard_constraints:
        device="cpu|cuda|npu",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=200,
    params:
        llmbuild=W.llmbuild("train"),
        key=W.device_key,
    shell:
        "{params.llmbuild} cluster check --device {wildcards.device} --key {params.key}"
        " --output {output} > {log} 2>&1"
