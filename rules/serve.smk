# A running OpenAI-compatible vLLM service per served variant, as a Snakemake service job.
# The endpoint file names the address at once (state "starting") and turns "ready" when the
# server answers /health; consumers poll it with a timeout, so a slow cold start never races
# Snakemake's latency-wait. Snakemake terminates the service when its consumers finish; `exec`
# makes our supervisor the process it signals, and the supervisor stops vLLM cleanly.


rule serve:
    input:
        model=get_serve_model,
        env=env_marker(serve_stack()),
    output:
        service("results/{model}/serve/{variant}/{consumer}.json"),
    log:
        "logs/{model}/serve/{variant}/{consumer}.log",
    conda:
        "../envs/serve-cpu.yaml"
    threads: 0
    resources:
        mem_mb=4000,
        serve_slots=1,
    params:
        llmbuild=llmbuild(serve_stack()),
        flags=serve_flags(),
        timeout=lookup("serve/ready_timeout", within=config),
    shell:
        "exec {params.llmbuild} serve run --model {input.model} --endpoint {output}"
        " --served-model-name {wildcards.variant} {params.flags}"
        " --ready-timeout {params.timeout} > {log} 2>&1"
