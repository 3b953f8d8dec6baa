# Inputs the graph makes itself (the embedded default) and tokenization into Megatron shards.


rule synth_corpus:
    input:
        env=env_marker("train"),
    output:
        "results/data/corpus.jsonl",
    log:
        "logs/data/synth_corpus.log",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=500,
    params:
        llmbuild=llmbuild("train"),
        num_docs=lookup("data/pretrain/num_docs", within=config),
        seed=lookup("data/pretrain/seed", within=config),
    shell:
        "{params.llmbuild} data synth-corpus --output {output} --num-docs {params.num_docs}"
        " --seed {params.seed} > {log} 2>&1"


rule synth_task:
    input:
        env=env_marker("train"),
    output:
        "results/data/task/{split}.jsonl",
    log:
        "logs/data/synth_task_{split}.log",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=500,
    params:
        llmbuild=llmbuild("train"),
        task=task_params,
    shell:
        "{params.llmbuild} data synth-task --split {wildcards.split} --output {output}"
        " --task {params.task[task]} --num-train {params.task[num_train]}"
        " --num-heldout {params.task[num_heldout]} --min-len {params.task[min_len]}"
        " --max-len {params.task[max_len]} --seed {params.task[seed]} > {log} 2>&1"


rule tiny_model:
    input:
        corpus=get_corpus(),
        env=env_marker("train"),
    output:
        directory("results/{model}/base/hf"),
    log:
        "logs/{model}/tiny_model.log",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=2000,
    params:
        llmbuild=llmbuild("train"),
        tiny=lookup("model/tiny", within=config),
    shell:
        "{params.llmbuild} model tiny --corpus {input.corpus} --output {output}"
        " --vocab-size {params.tiny[vocab_size]} --hidden-size {params.tiny[hidden_size]}"
        " --intermediate-size {params.tiny[intermediate_size]}"
        " --num-layers {params.tiny[num_layers]} --num-heads {params.tiny[num_heads]}"
        " --num-kv-heads {params.tiny[num_kv_heads]}"
        " --max-position-embeddings {params.tiny[max_position_embeddings]}"
        " --seed {params.tiny[seed]} > {log} 2>&1"


rule tokenize_pretrain:
    input:
        data=get_corpus(),
        tokenizer=get_base_hf,
        env=env_marker("train"),
    output:
        directory("results/{model}/shards/pretrain"),
    log:
        "logs/{model}/tokenize_pretrain.log",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=2000,
    params:
        llmbuild=llmbuild("train"),
        text_key=lookup("data/pretrain/text_key", within=config),
        seq_length=lookup("data/seq_length", within=config),
        workers=lookup("data/workers", within=config),
    shell:
        "{params.llmbuild} data tokenize --kind pretrain --input {input.data}"
        " --text-key {params.text_key} --tokenizer {input.tokenizer} --output {output}"
        " --seq-length {params.seq_length} --workers {params.workers} > {log} 2>&1"


rule tokenize_sft:
    input:
        data=get_sft_train(),
        tokenizer=get_base_hf,
        env=env_marker("train"),
    output:
        directory("results/{model}/shards/sft"),
    log:
        "logs/{model}/tokenize_sft.log",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=2000,
    params:
        llmbuild=llmbuild("train"),
        format=get_sft_format(),
        seq_length=lookup("data/seq_length", within=config),
        overlong=lookup("data/overlong", within=config),
        workers=lookup("data/workers", within=config),
    shell:
        "{params.llmbuild} data tokenize --kind sft --input {input.data} --format {params.format}"
        " --tokenizer {input.tokenizer} --output {output} --seq-length {params.seq_length}"
        " --overlong {params.overlong} --workers {params.workers} > {log} 2>&1"
