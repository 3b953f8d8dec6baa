# Plots for the report: the seeds' p90 TTFT/TPOT-vs-SLO picture with throughput, and loss.


rule plot_bench:
    input:
        csvs=get_bench_csvs,
        env=env_marker("plot"),
    output:
        report("results/{model}/plots/bench.png", category="Benchmarks"),
    log:
        "logs/{model}/plots/bench.log",
    conda:
        "../envs/plot.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=llmbuild("plot"),
        labels=csv_list(SERVED),
        slo_ttft=lookup("plot/slo_ttft_ms", within=config),
        slo_tpot=lookup("plot/slo_tpot_ms", within=config),
    shell:
        "{params.llmbuild} plot bench --csv {input.csvs} --labels {params.labels}"
        " --slo-ttft-ms {params.slo_ttft} --slo-tpot-ms {params.slo_tpot}"
        " --output {output} > {log} 2>&1"


rule plot_loss:
    input:
        logs=get_train_logs,
        env=env_marker("plot"),
    output:
        report("results/{model}/plots/loss.png", category="Training"),
    log:
        "logs/{model}/plots/loss.log",
    conda:
        "../envs/plot.yaml"
    resources:
        mem_mb=1000,
    params:
        llmbuild=llmbuild("plot"),
    shell:
        "{params.llmbuild} plot loss --log {input.logs} --output {output} > {log} 2>&1"
