# Quantization with llm-compressor (compressed-tensors output), from a reconverted model whose
# parity gate passed. Pairs the catalog marks unsupported were refused when the graph was
# planned (llmbuild.plan). Each quantized variant is proven by its accuracy gate: held-out
# accuracy through its service within gates.quant_max_drop of the model it came from.


rule quantize:
    input:
        src=W.sources("quantize"),
        model="results/{model}/{phase}/hf",
        proof="results/{model}/gates/parity/{phase}-mg2hf.json",
        calib=W.sft_train,
        env=W.env_marker("quantize"),
    output:
        directory("results/{model}/{phase}/quant/{scheme}"),
    log:
        "logs/{model}/{phase}/quantize_{scheme}.log",
    conda:
        "../envs/quantize.yaml"
    threads: 2
    resources:
        mem_mb=6000,
    params:
        llmbuild=W.llmbuild("quantize"),
        flags=W.quant_flags(),
    shell:
        "{params.llmbuild} quantize smoothquant --input {input.model} --calib {input.calib}"
        " --output {output} --scheme {wildcards.scheme} {params.flags} > {log} 2>&1"


rule gate_quant:
    input:
        src=W.sources("gates"),
        quantized="results/{model}/eval/{phase}-{scheme}/accuracy.json",
        reference="results/{model}/eval/{phase}/accuracy.json",
        env=W.env_marker("bench"),
    output:
        "results/{model}/gates/quant/{phase}-{scheme}.json",
    log:
        "logs/{model}/gates/quant-{phase}-{scheme}.log",
    wildcard_constraints:
        phase="pretrain|sft|dpo",
    conda:
        "../envs/bench.yaml"
    resources:
        mem_mb=200,
    params:
        llmbuild=W.llmbuild("bench"),
        flags=W.quant_gate_flags(),
    shell:
        "{params.llmbuild} gates quantize --input {input.quantized}"
        " --reference {input.reference} {params.flags}"
        " --subject {wildcards.phase}-{wildcards.scheme} --output {output} > {log} 2>&1"
