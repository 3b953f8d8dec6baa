# Hugging Face <-> Megatron-core (torch_dist) conversion.


rule hf2mg:
    input:
        hf=get_base_hf,
        env=env_marker("train"),
    output:
        directory("results/{model}/base/mcore"),
    log:
        "logs/{model}/hf2mg.log",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=4000,
    params:
        llmbuild=llmbuild("train"),
        tp=lookup("train/tp", within=config),
        pp=lookup("train/pp", within=config),
    shell:
        "{params.llmbuild} convert hf2mg --hf {input.hf} --output {output}"
        f" --tp {{params.tp}} --pp {{params.pp}}{pp_layers_flag()} > {{log}} 2>&1"


rule mg2hf:
    input:
        load="results/{model}/{phase}/mcore",
        source=get_base_hf,
        env=env_marker("train"),
    output:
        directory("results/{model}/{phase}/hf"),
    log:
        "logs/{model}/{phase}/mg2hf.log",
    wildcard_constraints:
        phase="pretrain|sft",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=4000,
    params:
        llmbuild=llmbuild("train"),
    shell:
        "{params.llmbuild} convert mg2hf --load {input.load} --hf-source {input.source}"
        " --output {output} > {log} 2>&1"
