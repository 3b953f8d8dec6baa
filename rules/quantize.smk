# Quantization with llm-compressor (compressed-tensors output). Pairs the catalog marks
# unsupported were refused when the graph was planned (rules/common.smk).


rule quantize:
    input:
        model="results/{model}/{phase}/hf",
        calib=get_sft_train(),
        env=env_marker("quantize"),
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
        llmbuild=llmbuild("quantize"),
        strength=lookup("quantize/smoothing_strength", within=config),
        num_samples=lookup("quantize/num_samples", within=config),
        max_seq_length=lookup("quantize/max_seq_length", within=config),
        seed=lookup("quantize/seed", within=config),
    shell:
        "{params.llmbuild} quant smoothquant --model {input.model} --calib {input.calib}"
        " --output {output} --scheme {wildcards.scheme} --smoothing-strength {params.strength}"
        " --num-samples {params.num_samples} --max-seq-length {params.max_seq_length}"
        " --seed {params.seed} > {log} 2>&1"
