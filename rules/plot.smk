# Plots for the report: the seeds' p90 TTFT/TPOT-vs-SLO picture with throughput (the default
# runs, and each sweep's runs side by side), latency vs request rate of the dynamic runs, each
# sweep's Pareto front, and loss; and every gate's verdict in one table.


rule plot_bench:
    input:
        src=W.sources("plot"),
        csvs=W.bench_csvs,
        env=W.env_marker("plot"),
    output:
        report(
            "results/{model}/plots/bench.png",
            caption="../report/bench.rst",
            category="Benchmarks",
        ),
    log:
        "logs/{model}/plots/bench.log",
    conda:
        "../envs/plot.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=W.llmbuild("plot"),
        flags=W.plot_bench_flags(),
    shell:
        "{params.llmbuild} plot bench --input {input.csvs}"
        " {params.flags} --output {output} > {log} 2>&1"


rule plot_dynamic:
    input:
        src=W.sources("plot"),
        csvs=W.dynamic_csvs,
        env=W.env_marker("plot"),
    output:
        report(
            "results/{model}/plots/dynamic.png",
            caption="../report/dynamic.rst",
            category="Benchmarks",
        ),
    log:
        "logs/{model}/plots/dynamic.log",
    conda:
        "../envs/plot.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=W.llmbuild("plot"),
        flags=W.plot_dynamic_flags(),
    shell:
        "{params.llmbuild} plot dynamic --input {input.csvs}"
        " {params.flags} --output {output} > {log} 2>&1"


# Several models (models:): every model's benchmarked variants side by side, labelled
# <model>/<variant>, in the same two pictures (kind: bench, the static benchmarks' p90
# TTFT/TPOT vs SLO; dynamic, latency vs request rate).
rule plot_compare:
    input:
        src=W.sources("plot"),
        csvs=W.compare_csvs,
        env=W.env_marker("plot"),
    output:
        report(
            "results/compare/{kind}.png",
            caption="../report/compare.rst",
            category="Benchmarks",
        ),
    log:
        "logs/compare/{kind}.log",
    wildcard_constraints:
        kind="bench|dynamic",
    conda:
        "../envs/plot.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=W.llmbuild("plot"),
        flags=W.compare_flags,
    shell:
        "{params.llmbuild} plot {wildcards.kind} --input {input.csvs}"
        " {params.flags} --output {output} > {log} 2>&1"


# A sweep's runs: output throughput per user vs output throughput with the Pareto front, the
# 4-graph comparison, and every row in one CSV with its sweep coordinates.
rule plot_sweep:
    input:
        src=W.sources("plot"),
        csvs=W.sweep_csvs,
        env=W.env_marker("plot"),
    output:
        pareto=report(
            "results/{model}/plots/sweeps/{sweep}/pareto.png",
            caption="../report/sweep.rst",
            category="Sweeps",
            subcategory="{sweep}",
        ),
        compare=report(
            "results/{model}/plots/sweeps/{sweep}/compare.png",
            caption="../report/sweep.rst",
            category="Sweeps",
            subcategory="{sweep}",
        ),
        table="results/{model}/plots/sweeps/{sweep}/summary.csv",
    log:
        "logs/{model}/plots/sweeps/{sweep}.log",
    conda:
        "../envs/plot.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=W.llmbuild("plot"),
        flags=W.plot_sweep_flags,
    shell:
        "{params.llmbuild} plot sweep --input {input.csvs} {params.flags}"
        " --title {wildcards.sweep} --output {output.pareto} --compare {output.compare}"
        " --table {output.table} > {log} 2>&1"


rule plot_loss:
    input:
        src=W.sources("plot"),
        logs=W.train_logs,
        env=W.env_marker("plot"),
    output:
        report(
            "results/{model}/plots/loss.png",
            caption="../report/loss.rst",
            category="Training",
        ),
    log:
        "logs/{model}/plots/loss.log",
    conda:
        "../envs/plot.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=W.llmbuild("plot"),
    shell:
        "{params.llmbuild} plot loss --input {input.logs} --output {output} > {log} 2>&1"


rule gate_summary:
    input:
        src=W.sources("gates"),
        verdicts=W.all_gates,
        env=W.env_marker("plot"),
    output:
        summary="results/{model}/gates/summary.json",
        html=report(
            "results/{model}/gates/summary.html",
            caption="../report/gates.rst",
            category="Gates",
        ),
    log:
        "logs/{model}/gates/summary.log",
    conda:
        "../envs/plot.yaml"
    resources:
        mem_mb=200,
    params:
        llmbuild=W.llmbuild("plot"),
    shell:
        "{params.llmbuild} gates summary --input {input.verdicts} --output {output.summary}"
        " --html {output.html} > {log} 2>&1"


rule audit_page:
    input:
        src=W.sources("plot"),
        plots=["results/{model}/plots/bench.png", "results/{model}/plots/loss.png"],
        gates="results/{model}/gates/summary.json",
        env=W.env_marker("plot"),
    output:
        report(
            "results/{model}/audit/index.html",
            caption="../report/audit.rst",
            category="Audit",
        ),
    log:
        "logs/{model}/audit/page.log",
    conda:
        "../envs/plot.yaml"
    resources:
        mem_mb=200,
    params:
        llmbuild=W.llmbuild("plot"),
    shell:
        "{params.llmbuild} plot audit --input {input.plots} --gates {input.gates}"
        " --output {output} > {log} 2>&1"
