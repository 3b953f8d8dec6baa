# Benchmarks of a running service (static and dynamic) and the dataset the dynamic one draws
# from. Each is a gate on its service: failed requests beyond gates.max_failed_fraction (or a
# service that died) stop the job with the server's root-cause line and no finished-looking
# output (the records stay under logs/.../failed-*/); a benchmark whose client fell behind its
# target rate or lagged fails too (gates.mode: warn marks it invalid in the CSV and the plot).


rule bench_static:
    input:
        src=W.sources("bench"),
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
        keep=W.keep_on_failure("static"),
    shell:
        "{params.llmbuild} bench static --endpoint {input.endpoint} --tokenizer {input.tokenizer}"
        " {params.flags} --output {output.csv} --records {output.records}"
        " --verdict {output.verdict} --ready-timeout {params.timeout}"
        " --keep-on-failure {params.keep} > {log} 2>&1"


# A sweep's benchmark: one benchmark setting (a static benchmark's knobs and request mix)
# against one serve setting's service. The consumers of a service run together and take
# turns on its benchmark lock; the server's own counters (/metrics) give the prefix cache's
# hit rate and speculative decoding's acceptance rate in the CSV.
use rule bench_static as bench_sweep with:
    input:
        src=W.sources("bench"),
        endpoint=W.sweep_endpoint,
        tokenizer=W.serve_model,
        env=W.env_marker("bench"),
    output:
        csv="results/{model}/sweeps/{sweep}/{variant}/{setting}/{workload}.csv",
        records="results/{model}/sweeps/{sweep}/{variant}/{setting}/{workload}.jsonl",
        verdict="results/{model}/gates/sweeps/{sweep}/{variant}/{setting}/{workload}.json",
    log:
        "logs/{model}/sweeps/{sweep}/{variant}/{setting}/{workload}.log",
    threads: W.sweep_bench_threads
    params:
        llmbuild=W.llmbuild("bench"),
        flags=W.sweep_bench_flags,
        timeout=lookup("serve/ready_timeout", within=config),
        keep=W.keep_on_failure("sweep"),


rule dataset_generate:
    input:
        src=W.sources("bench"),
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
        "{params.llmbuild} bench generate-dataset --output {output} --tokenizer {input.tokenizer}"
        " {params.flags} > {log} 2>&1"


# Shares the static benchmark's service. Snakemake starts a service's consumers together;
# `llmbuild bench` holds a per-service lock while measuring, so they take turns.
rule bench_dynamic:
    input:
        src=W.sources("bench"),
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
        flags=W.bench_dynamic_flags,
        timeout=lookup("serve/ready_timeout", within=config),
    shell:
        "{params.llmbuild} bench dynamic --endpoint {input.endpoint} --tokenizer {input.tokenizer}"
        " --data {input.dataset} {params.flags} --output {output.csv}"
        " --records {output.records} --verdict {output.verdict}"
        " --ready-timeout {params.timeout}"
        " --keep-on-failure logs/{wildcards.model}/bench/{wildcards.variant}/failed-dynamic"
        " > {log} 2>&1"
