# Quantization with llm-compressor (compressed-tensors output), from a reconverted model whose
# parity gate passed: one variant per scheme in quantize.schemes (llmbuild.quantize.schemes).
# Pairs the catalog marks unsupported, and schemes the serving stack cannot serve on its
# device, were refused when the graph was planned (llmbuild.plan). The SmoothQuant scales
# are their own artifact, made once per model and phase and folded in by every scheme that
# smooths (quantize.scale_input reuses another build's instead). Each quantized variant is
# proven by its accuracy gate: held-out accuracy through its service within
# gates.quant_max_drop of the model it came from.


rule quantize_scales:
    input:
        src=W.sources("quantize"),
        model="results/{model}/{phase}/hf",
        proof="results/{model}/gates/parity/{phase}-mg2hf.json",
        calib=W.quant_calib,
        env=W.env_marker("quantize"),
    output:
        "results/{model}/{phase}/quant/scales/smoothquant.safetensors",
    log:
        "logs/{model}/{phase}/quantize_scales.log",
    wildcard_constraints:
        model=W.own_model_pattern(),
    conda:
        "../envs/quantize.yaml"
    threads: 2
    resources:
        mem_mb=6000,
    params:
        llmbuild=W.llmbuild("quantize"),
        flags=W.scales_flags(),
    shell:
        "{params.llmbuild} quantize scales --input {input.model} --calib {input.calib}"
        " --output {output} {params.flags} > {log} 2>&1"


rule quantize:
    input:
        unpack(W.quant_inputs),
        src=W.sources("quantize"),
        model="results/{model}/{phase}/hf",
        proof="results/{model}/gates/parity/{phase}-mg2hf.json",
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
        flags=W.quant_flags,
    shell:
        "{params.llmbuild} quantize run --scheme {wildcards.scheme} --input {input.model}"
        " --output {output} {params.flags} > {log} 2>&1"


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
