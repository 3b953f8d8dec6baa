# Task accuracy of each served variant on the held-out split, through its service (a gate on
# the service: failed requests or a dead service stop it), and the summary of all variants.


rule eval_accuracy:
    input:
        src=W.sources("eval"),
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
        "{params.llmbuild} eval accuracy --endpoint {input.endpoint} --input {input.data}"
        " --output {output.result} --records {output.records} --verdict {output.verdict}"
        " {params.flags} --ready-timeout {params.timeout}"
        " --keep-on-failure logs/{wildcards.model}/eval/{wildcards.variant}/failed"
        " > {log} 2>&1"


rule eval_summary:
    input:
        src=W.sources("eval"),
        results=W.eval_results,
        env=W.env_marker("bench"),
    output:
        report(
            "results/{model}/eval/summary.json",
            caption="../report/eval.rst",
            category="Evaluation",
        ),
    log:
        "logs/{model}/eval/summary.log",
    conda:
        "../envs/bench.yaml"
    resources:
        mem_mb=200,
    params:
        llmbuild=W.llmbuild("bench"),
    shell:
        "{params.llmbuild} eval summary --input {input.results} --output {output} > {log} 2>&1"


# Each LoRA adapter's accuracy on its own task's held-out split through the LoRA service
# (who: adapter), the model it adapts on the same split through the same service (base), and
# with train.lora.merge the merged variant's (merged, its own service). The service runs all
# of them at once (it batches them); each client mostly waits on it, so they take no core of
# their own (Snakemake sums the cores of a service's consumers, and two adapters make four).
rule eval_lora:
    input:
        src=W.sources("eval"),
        endpoint=W.lora_eval_endpoint,
        data="results/{model}/lora/{adapter}/data/heldout.jsonl",
        env=W.env_marker("bench"),
    output:
        result="results/{model}/eval/lora/{adapter}/{who}/accuracy.json",
        records="results/{model}/eval/lora/{adapter}/{who}/records.jsonl",
        verdict="results/{model}/gates/requests/lora-eval/{adapter}-{who}.json",
    log:
        "logs/{model}/eval/lora/{adapter}/{who}.log",
    wildcard_constraints:
        who="adapter|base|merged",
    conda:
        "../envs/bench.yaml"
    threads: 0
    resources:
        mem_mb=1000,
    params:
        llmbuild=W.llmbuild("bench"),
        flags=W.eval_flags(),
        served=W.lora_eval_model,
        timeout=lookup("serve/ready_timeout", within=config),
    shell:
        "{params.llmbuild} eval accuracy --endpoint {input.endpoint} --input {input.data}"
        " --model {params.served} --output {output.result} --records {output.records}"
        " --verdict {output.verdict} {params.flags} --ready-timeout {params.timeout}"
        " --keep-on-failure logs/{wildcards.model}/eval/lora/{wildcards.adapter}/failed-{wildcards.who}"
        " > {log} 2>&1"
