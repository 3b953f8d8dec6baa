# A running OpenAI-compatible vLLM service per served variant, as a Snakemake service job.
# The endpoint file names the address at once (state "starting") and turns "ready" when the
# server answers /health; consumers poll it with a timeout, so a slow cold start never races
# Snakemake's latency-wait. Snakemake terminates the service when its consumers finish; `exec`
# makes our supervisor the process it signals, and the supervisor stops vLLM cleanly. A
# service starts only on a proven model (W.variant_gates), and with serve.dtype auto on a dtype
# its kernels accept on this device (recorded in the endpoint file and its provenance). The
# LoRA service (variant lora) serves the model train.lora.from names under that name, with
# every adapter of train.lora.adapters beside it (--lora-module NAME=PEFT_DIR).


rule serve:
    input:
        unpack(W.serve_inputs),
        src=W.sources("serve"),
        env=W.env_marker(W.serve_stack()),
        check=ancient(W.device_check("serve")),
    output:
        service("results/{model}/serve/{variant}/{consumer}.json"),
    log:
        "logs/{model}/serve/{variant}/{consumer}.log",
    conda:
        "../envs/serve-cpu.yaml"
    threads: 0
    resources:
        **W.device_resources("serve"),
        mem_mb=4000,
        serve_slots=1,
    params:
        llmbuild=W.serve_launcher(),
        flags=W.serve_flags(),
        name=W.served_name,
        lora=W.lora_serve_flags,
    shell:
        "exec {params.llmbuild} serve run --input {input.model} --endpoint {output}"
        " --served-model-name {params.name} {params.flags} {params.lora} > {log} 2>&1"


# A sweep's service: a served variant under one of the sweep's serve settings (its knobs over
# serve.*, its speculative decoding), for every benchmark setting of the sweep.
use rule serve as serve_sweep with:
    input:
        unpack(W.sweep_serve_inputs),
        src=W.sources("serve"),
        env=W.env_marker(W.serve_stack()),
        check=ancient(W.device_check("serve")),
    output:
        service("results/{model}/sweeps/{sweep}/{variant}/{setting}/service.json"),
    log:
        "logs/{model}/sweeps/{sweep}/{variant}/{setting}.serve.log",
    params:
        llmbuild=W.serve_launcher(),
        flags=W.sweep_serve_flags,
        name=W.served_name,
        lora=W.lora_serve_flags,


# MindIE Service's config.json for a served variant (mindie.enabled): the seeds' Ascend
# serving, from the same serve.* keys and the mindie section, checked against MindIE's
# documented keys. Written on a proven model; MindIE itself is not started here.
rule mindie_config:
    input:
        unpack(W.mindie_inputs),
        src=W.sources("mindie"),
        env=W.env_marker("plot"),
    output:
        "results/{model}/mindie/{variant}/config.json",
    log:
        "logs/{model}/mindie/{variant}.log",
    conda:
        "../envs/plot.yaml"
    resources:
        mem_mb=200,
    params:
        llmbuild=W.llmbuild("plot"),
        flags=W.mindie_flags,
    shell:
        "{params.llmbuild} mindie config --model-dir {input.model} --output {output}"
        " {params.flags} > {log} 2>&1"
