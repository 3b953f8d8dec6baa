# Training on megatron-core: the chain train.phases (default pretrain then SFT), the first phase
# from the converted base, each next one from the previous phase's checkpoint. A killed job
# rerun by the graph resumes from its last save (train.save_interval) in <output>.partial/.
# With train.tp * pp * dp > 1 the command runs under torchrun, one process per rank. Each
# phase starts from a proven checkpoint: the base's parity gate, or the previous phase's
# training gate (every step logged once with a finite loss).


rule train:
    input:
        unpack(W.train_inputs),
        src=W.sources("train"),
        env=W.env_marker("train"),
        check=ancient(W.device_check("train")),
    output:
        ckpt=directory("results/{model}/{phase}/mcore"),
        log="results/{model}/{phase}/train_log.jsonl",
    log:
        "logs/{model}/{phase}/train.log",
    wildcard_constraints:
        phase="pretrain|sft|dpo",
    conda:
        "../envs/train.yaml"
    threads: W.train_threads()
    resources:
        **W.train_cluster_resources(),
        mem_mb=W.train_mem_mb(),
    params:
        llmbuild=W.train_launcher(),
        flags=W.phase_flags,
        run=W.train_run_flags(),
        layout=W.layout_flags(),
        rank_threads=W.train_rank_threads,
    shell:
        "{params.llmbuild} train run --mode {wildcards.phase} --input {input.load}"
        " --data {input.data} --output {output.ckpt} --train-log {output.log}"
        " {params.flags}"
        " {params.run} {params.layout}"
        " --threads {params.rank_threads} > {log} 2>&1"


rule gate_train:
    input:
        src=W.sources("gates"),
        log="results/{model}/{phase}/train_log.jsonl",
        env=W.env_marker("train"),
    output:
        "results/{model}/gates/train/{phase}.json",
    log:
        "logs/{model}/gates/train-{phase}.log",
    wildcard_constraints:
        phase="pretrain|sft|dpo",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=500,
    params:
        llmbuild=W.llmbuild("train"),
        iters=W.phase_iters,
    shell:
        "{params.llmbuild} gates train --input {input.log} --iters {params.iters}"
        " --subject {wildcards.phase} --output {output} > {log} 2>&1"


# LoRA (train.lora): one adapter per entry of train.lora.adapters, trained on the frozen
# checkpoint of phase train.lora.from with the same launcher and layout (train.tp/pp) as the
# other phases; the output is the Megatron LoRA adapter `convert lora2hf` reads.
rule train_lora:
    input:
        unpack(W.lora_train_inputs),
        src=W.sources("train"),
        env=W.env_marker("train"),
        check=ancient(W.device_check("train")),
    output:
        adapter=directory("results/{model}/lora/{adapter}/mcore"),
        log="results/{model}/lora/{adapter}/train_log.jsonl",
    log:
        "logs/{model}/lora/{adapter}/train.log",
    conda:
        "../envs/train.yaml"
    threads: W.train_threads()
    resources:
        **W.train_cluster_resources(),
        mem_mb=W.train_mem_mb(),
    params:
        llmbuild=W.train_launcher(),
        flags=W.lora_train_flags(),
        device=W.train_device_flags(),
        layout=W.layout_flags(),
        rank_threads=W.train_rank_threads,
    shell:
        "{params.llmbuild} train lora --input {input.load} --data {input.data}"
        " --output {output.adapter} --train-log {output.log} {params.flags}"
        " {params.device} {params.layout}"
        " --threads {params.rank_threads} > {log} 2>&1"


rule gate_train_lora:
    input:
        src=W.sources("gates"),
        log="results/{model}/lora/{adapter}/train_log.jsonl",
        env=W.env_marker("train"),
    output:
        "results/{model}/gates/train/lora-{adapter}.json",
    log:
        "logs/{model}/gates/train-lora-{adapter}.log",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=500,
    params:
        llmbuild=W.llmbuild("train"),
        iters=W.lora_iters(),
    shell:
        "{params.llmbuild} gates train --input {input.log} --iters {params.iters}"
        " --subject lora-{wildcards.adapter} --output {output} > {log} 2>&1"
