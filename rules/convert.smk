# Hugging Face <-> Megatron-core (torch_dist) conversion, each direction proven by a parity
# gate: megatron-core's logits on the checkpoint against the HF model's on the same tokens.


rule hf2mg:
    input:
        src=W.sources("convert"),
        hf=W.base_hf,
        env=W.env_marker("train"),
    output:
        directory("results/{model}/base/mcore"),
    log:
        "logs/{model}/hf2mg.log",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=4000,
    params:
        llmbuild=W.llmbuild("train"),
        flags=W.layout_flags(),
    shell:
        "{params.llmbuild} convert hf2mg --input {input.hf} --output {output}"
        " {params.flags} > {log} 2>&1"


rule mg2hf:
    input:
        src=W.sources("convert"),
        load="results/{model}/{phase}/mcore",
        trained="results/{model}/gates/train/{phase}.json",
        source=W.base_hf,
        env=W.env_marker("train"),
    output:
        directory("results/{model}/{phase}/hf"),
    log:
        "logs/{model}/{phase}/mg2hf.log",
    wildcard_constraints:
        phase="pretrain|sft|dpo",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=4000,
    params:
        llmbuild=W.llmbuild("train"),
    shell:
        "{params.llmbuild} convert mg2hf --input {input.load} --hf-source {input.source}"
        " --output {output} > {log} 2>&1"


rule gate_parity_hf2mg:
    input:
        src=W.sources("gates"),
        hf=W.base_hf,
        mcore="results/{model}/base/mcore",
        env=W.env_marker("train"),
    output:
        "results/{model}/gates/parity/base-hf2mg.json",
    log:
        "logs/{model}/gates/parity-base-hf2mg.log",
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=W.parity_mem_mb,
    params:
        llmbuild=W.llmbuild("train"),
        flags=W.parity_flags(),
    shell:
        "{params.llmbuild} gates parity --direction hf2mg --hf {input.hf} --mcore {input.mcore}"
        " {params.flags} --threads {threads} --output {output} > {log} 2>&1"


rule gate_parity_mg2hf:
    input:
        src=W.sources("gates"),
        mcore="results/{model}/{phase}/mcore",
        hf="results/{model}/{phase}/hf",
        env=W.env_marker("train"),
    output:
        "results/{model}/gates/parity/{phase}-mg2hf.json",
    log:
        "logs/{model}/gates/parity-{phase}-mg2hf.log",
    wildcard_constraints:
        phase="pretrain|sft|dpo",
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=W.parity_mem_mb,
    params:
        llmbuild=W.llmbuild("train"),
        flags=W.parity_flags(),
    shell:
        "{params.llmbuild} gates parity --direction mg2hf --hf {input.hf} --mcore {input.mcore}"
        " {params.flags} --threads {threads} --output {output} > {log} 2>&1"


# A trained LoRA adapter -> a PEFT adapter of the model it adapts (loaded by PEFT before it
# is published), or with --merge that model with the adapter merged in (train.lora.merge).
rule lora2hf:
    input:
        src=W.sources("convert"),
        lora="results/{model}/lora/{adapter}/mcore",
        trained="results/{model}/gates/train/lora-{adapter}.json",
        base=W.lora_base_hf,
        proofs=W.lora_base_proofs_of,
        env=W.env_marker("train"),
    output:
        directory("results/{model}/lora/{adapter}/{form}"),
    log:
        "logs/{model}/lora/{adapter}/lora2hf-{form}.log",
    wildcard_constraints:
        form="peft|hf",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=4000,
    params:
        llmbuild=W.llmbuild("train"),
        merge=W.lora_merge_flag,
    shell:
        "{params.llmbuild} convert lora2hf --input {input.lora} --base {input.base}"
        " --output {output} {params.merge} > {log} 2>&1"
