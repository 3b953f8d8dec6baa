# Consumers of a running service: task accuracy on the held-out split, and benchmarks.


rule eval_accuracy:
    input:
        endpoint=endpoint_for("eval"),
        data=get_sft_heldout(),
        env=env_marker("bench"),
    output:
        result="results/{model}/eval/{variant}/accuracy.json",
        records="results/{model}/eval/{variant}/records.jsonl",
    log:
        "logs/{model}/eval/{variant}/accuracy.log",
    conda:
        "../envs/bench.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=llmbuild("bench"),
        max_tokens=lookup("eval/max_tokens", within=config),
        concurrency=lookup("eval/concurrency", within=config),
        timeout=lookup("serve/ready_timeout", within=config),
    shell:
        "{params.llmbuild} eval accuracy --endpoint {input.endpoint} --data {input.data}"
        " --output {output.result} --records {output.records}"
        " --max-tokens {params.max_tokens} --concurrency {params.concurrency}"
        " --ready-timeout {params.timeout} > {log} 2>&1"


rule eval_summary:
    input:
        get_eval_results,
    output:
        report("results/{model}/eval/summary.json", category="Evaluation"),
    log:
        "logs/{model}/eval/summary.log",
    conda:
        "../envs/bench.yaml"
    resources:
        mem_mb=200,
    script:
        "../scripts/eval_summary.py"


rule bench_static:
    input:
        endpoint=endpoint_for("bench"),
        tokenizer=get_serve_model,
        env=env_marker("bench"),
    output:
        csv="results/{model}/bench/{variant}/static.csv",
        records="results/{model}/bench/{variant}/static.jsonl",
    log:
        "logs/{model}/bench/{variant}/static.log",
    conda:
        "../envs/bench.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=llmbuild("bench"),
        concurrency=csv_list(config["bench"]["static"]["concurrency"]),
        input_len=csv_list(config["bench"]["static"]["input_len"]),
        output_len=csv_list(config["bench"]["static"]["output_len"]),
        epochs=lookup("bench/static/epochs", within=config),
        seed=lookup("bench/static/seed", within=config),
        timeout=lookup("serve/ready_timeout", within=config),
    shell:
        "{params.llmbuild} bench static --endpoint {input.endpoint} --tokenizer {input.tokenizer}"
        " --concurrency {params.concurrency} --input-len {params.input_len}"
        " --output-len {params.output_len} --epochs {params.epochs} --seed {params.seed}"
        " --output {output.csv} --records {output.records}"
        " --ready-timeout {params.timeout} > {log} 2>&1"


rule dataset_generate:
    input:
        tokenizer=get_base_hf,
        env=env_marker("bench"),
    output:
        "results/{model}/bench/datasets/generated.jsonl",
    log:
        "logs/{model}/bench/dataset_generate.log",
    conda:
        "../envs/bench.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=llmbuild("bench"),
        flags=dataset_generate_flags(),
    shell:
        "{params.llmbuild} dataset generate --output {output} --tokenizer {input.tokenizer}"
        " {params.flags} > {log} 2>&1"


# Shares the static benchmark's service. Snakemake starts a service's consumers together;
# `llmbuild bench` holds a per-service lock while measuring, so they take turns.
rule bench_dynamic:
    input:
        endpoint=endpoint_for("bench"),
        tokenizer=get_serve_model,
        dataset=get_bench_dataset,
        env=env_marker("bench"),
    output:
        csv="results/{model}/bench/{variant}/dynamic.csv",
        records="results/{model}/bench/{variant}/dynamic.jsonl",
    log:
        "logs/{model}/bench/{variant}/dynamic.log",
    conda:
        "../envs/bench.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=llmbuild("bench"),
        flags=bench_dynamic_flags(),
        timeout=lookup("serve/ready_timeout", within=config),
    shell:
        "{params.llmbuild} bench dynamic --endpoint {input.endpoint} --tokenizer {input.tokenizer}"
        " --dataset {input.dataset} {params.flags}"
        " --output {output.csv} --records {output.records}"
        " --ready-timeout {params.timeout} > {log} 2>&1"
