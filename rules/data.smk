# Inputs the graph makes itself (the embedded default) and tokenization into Megatron shards.


rule synth_corpus:
    input:
        src=W.sources("data"),
        env=W.env_marker("train"),
    output:
        "results/{model}/data/corpus.jsonl",
    log:
        "logs/{model}/data/synth_corpus.log",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=500,
    params:
        llmbuild=W.llmbuild("train"),
        flags=W.synth_corpus_flags(),
    shell:
        "{params.llmbuild} data synth-corpus --output {output} {params.flags} > {log} 2>&1"


rule synth_task:
    input:
        src=W.sources("data"),
        env=W.env_marker("train"),
    output:
        "results/{model}/data/task/{split}.jsonl",
    log:
        "logs/{model}/data/synth_task_{split}.log",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=500,
    params:
        llmbuild=W.llmbuild("train"),
        flags=W.task_flags,
    shell:
        "{params.llmbuild} data synth-task --split {wildcards.split} --output {output}"
        " {params.flags} > {log} 2>&1"


rule tokenize_pretrain:
    input:
        src=W.sources("data"),
        data=W.corpus,
        tokenizer=W.base_hf,
        env=W.env_marker("train"),
    output:
        directory("results/{model}/shards/pretrain"),
    log:
        "logs/{model}/tokenize_pretrain.log",
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=2000,
    params:
        llmbuild=W.llmbuild("train"),
        flags=W.tokenize_flags("pretrain"),
        workers=W.tokenize_workers,
    shell:
        "{params.llmbuild} data tokenize --kind pretrain --input {input.data}"
        " --tokenizer {input.tokenizer} --output {output} --workers {params.workers}"
        " {params.flags} > {log} 2>&1"


rule tokenize_sft:
    input:
        src=W.sources("data"),
        data=W.sft_train,
        tokenizer=W.base_hf,
        env=W.env_marker("train"),
    output:
        directory("results/{model}/shards/sft"),
    log:
        "logs/{model}/tokenize_sft.log",
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=2000,
    params:
        llmbuild=W.llmbuild("train"),
        flags=W.tokenize_flags("sft"),
        workers=W.tokenize_workers,
    shell:
        "{params.llmbuild} data tokenize --kind sft --input {input.data}"
        " --tokenizer {input.tokenizer} --output {output} --workers {params.workers}"
        " {params.flags} > {log} 2>&1"


# DPO's preference pairs: both answers after the same prompt, each as the instruction handler
# encodes a conversation.
rule tokenize_dpo:
    input:
        src=W.sources("data"),
        data=W.dpo_train,
        tokenizer=W.base_hf,
        env=W.env_marker("train"),
    output:
        directory("results/{model}/shards/dpo"),
    log:
        "logs/{model}/tokenize_dpo.log",
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=2000,
    params:
        llmbuild=W.llmbuild("train"),
        flags=W.tokenize_flags("dpo"),
        workers=W.tokenize_workers,
    shell:
        "{params.llmbuild} data tokenize --kind dpo --input {input.data}"
        " --tokenizer {input.tokenizer} --output {output} --workers {params.workers}"
        " {params.flags} > {log} 2>&1"


# Each LoRA adapter's instruction task (train.lora.adapters: name, task), with data.sft's
# sizes and seed, and its tokenized shards (read by `llmbuild train lora`).
rule synth_lora_task:
    input:
        src=W.sources("data"),
        env=W.env_marker("train"),
    output:
        "results/{model}/lora/{adapter}/data/{split}.jsonl",
    log:
        "logs/{model}/lora/{adapter}/synth_task_{split}.log",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=500,
    params:
        llmbuild=W.llmbuild("train"),
        flags=W.lora_task_flags,
    shell:
        "{params.llmbuild} data synth-task --split {wildcards.split} --output {output}"
        " {params.flags} > {log} 2>&1"


rule tokenize_lora:
    input:
        src=W.sources("data"),
        data="results/{model}/lora/{adapter}/data/train.jsonl",
        tokenizer=W.base_hf,
        env=W.env_marker("train"),
    output:
        directory("results/{model}/lora/{adapter}/shards"),
    log:
        "logs/{model}/lora/{adapter}/tokenize.log",
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=2000,
    params:
        llmbuild=W.llmbuild("train"),
        flags=W.lora_tokenize_flags(),
        workers=W.tokenize_workers,
    shell:
        "{params.llmbuild} data tokenize --kind sft --input {input.data}"
        " --tokenizer {input.tokenizer} --output {output} --workers {params.workers}"
        " {params.flags} > {log} 2>&1"
