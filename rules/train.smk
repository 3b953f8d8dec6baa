# Training on megatron-core: pretrain from the converted base, then SFT from the pretrained.
# With train.tp * train.pp > 1 the command runs under torchrun, one process per rank.


rule train:
    input:
        load=get_train_load,
        data=get_shards,
        env=env_marker("train"),
    output:
        ckpt=directory("results/{model}/{phase}/mcore"),
        log="results/{model}/{phase}/train_log.jsonl",
    log:
        "logs/{model}/{phase}/train.log",
    wildcard_constraints:
        phase="pretrain|sft",
    conda:
        "../envs/train.yaml"
    threads: max(2, TRAIN_RANKS)
    resources:
        mem_mb=6000 * TRAIN_RANKS,
    params:
        llmbuild=train_launcher(),
        device=lookup("train/device", within=config),
        tp=lookup("train/tp", within=config),
        pp=lookup("train/pp", within=config),
        iters=train_param("iters"),
        lr=train_param("lr"),
        min_lr=train_param("min_lr"),
        warmup=train_param("warmup_iters"),
        mbs=train_param("micro_batch_size"),
        gbs=train_param("global_batch_size"),
        seq_length=train_param("seq_length"),
        weight_decay=train_param("weight_decay"),
        seed=train_param("seed"),
    shell:
        "{params.llmbuild} train run --mode {wildcards.phase} --load {input.load}"
        f" --data {{input.data}} --save {{output.ckpt}} {train_log_flag()} {{output.log}}"
        " --train-iters {params.iters} --lr {params.lr} --min-lr {params.min_lr}"
        " --warmup-iters {params.warmup} --micro-batch-size {params.mbs}"
        " --global-batch-size {params.gbs} --seq-length {params.seq_length}"
        " --weight-decay {params.weight_decay} --seed {params.seed}"
        f" --device {{params.device}} --tp {{params.tp}} --pp {{params.pp}}{pp_layers_flag()}"
        f" --threads {train_rank_threads()} > {{log}} 2>&1"
