# Consumers of a running service: task accuracy on the held-out split, and benchmarks. Each is
# a gate on its service: failed requests beyond gates.max_failed_fraction (or a service that
# died) stop the job with the server's root-cause line and no finished-looking output (the
# records stay under logs/.../failed/); a benchmark whose client fell behind its target rate
# or lagged fails too (gates.mode: warn marks it invalid in the CSV and the plot instead).


rule eval_accuracy:
    input:
        endpoint=W.endpoint("eval"),
        data=W.sft_heldout,
        env=W.env_marker("bench"),
    output:
        result="results/{model}/eval/{variant}/accuracy.json",
        records="results/{model}/eval/{variant}/records.jsonl",
        verdict="results/{model}/gates/requests/{variant}-eval.json",
    log:
        "logs/{model}/eval/{variant}/accuracy.log",
    conda:
        "../envs/bench.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=W.llmbuild("bench"),
        flags=W.eval_flags(),
        timeout=lookup("serve/ready_timeout", within=config),
    shell:
        "{params.llmbuild} eval accuracy --endpoint {input.endpoint} --data {input.data}"
        " --output {output.result} --records {output.records} --verdict {output.verdict}"
        " {params.flags} --ready-timeout {params.timeout}"
        " --keep-on-failure logs/{wildcards.model}/eval/{wildcards.variant}/failed"
        " > {log} 2>&1"


rule eval_summary:
    input:
        W.eval_results,
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
        endpoint=W.endpoint("bench"),
        tokenizer=W.serve_model,
        env=W.env_marker("bench"),
    output:
        csv="results/{model}/bench/{variant}/static.csv",
        records="results/{model}/bench/{variant}/static.jsonl",
        verdict="results/{model}/gates/bench/{variant}-static.json",
    log:
        "logs/{model}/bench/{variant}/static.log",
    conda:
        "../envs/bench.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=W.llmbuild("bench"),
        flags=W.bench_static_flags(),
        timeout=lookup("serve/ready_timeout", within=config),
    shell:
        "{params.llmbuild} bench static --endpoint {input.endpoint} --tokenizer {input.tokenizer}"
        " {params.flags} --output {output.csv} --records {output.records}"
        " --verdict {output.verdict} --ready-timeout {params.timeout}"
        " --keep-on-failure logs/{wildcards.model}/bench/{wildcards.variant}/failed-static"
        " > {log} 2>&1"


rule dataset_generate:
    input:
        tokenizer=W.base_hf,
        env=W.env_marker("bench"),
    output:
        "results/{model}/bench/datasets/generated.jsonl",
    log:
        "logs/{model}/bench/dataset_generate.log",
    conda:
        "../envs/bench.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=W.llmbuild("bench"),
        flags=W.dataset_generate_flags(),
    shell:
        "{params.llmbuild} dataset generate --output {output} --tokenizer {input.tokenizer}"
        " {params.flags} > {log} 2>&1"


# Shares the static benchmark's service. Snakemake starts a service's consumers together;
# `llmbuild bench` holds a per-service lock while measuring, so they take turns.
rule bench_dynamic:
    input:
        endpoint=W.endpoint("bench"),
        tokenizer=W.serve_model,
        dataset=W.bench_dataset,
        env=W.env_marker("bench"),
    output:
        csv="results/{model}/bench/{variant}/dynamic.csv",
        records="results/{model}/bench/{variant}/dynamic.jsonl",
        verdict="results/{model}/gates/bench/{variant}-dynamic.json",
    log:
        "logs/{model}/bench/{variant}/dynamic.log",
    conda:
        "../envs/bench.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=W.llmbuild("bench"),
        flags=W.bench_dynamic_flags(),
        timeout=lookup("serve/ready_timeout", within=config),
    shell:
        "{params.llmbuild} bench dynamic --endpoint {input.endpoint} --tokenizer {input.tokenizer}"
        " --dataset {input.dataset} {params.flags} --output {output.csv}"
        " --records {output.records} --verdict {output.verdict}"
        " --ready-timeout {params.timeout}"
        " --keep-on-failure logs/{wildcards.model}/bench/{wildcards.variant}/failed-dynamic"
        " > {log} 2>&1"
