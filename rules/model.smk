# The embedded default's base model: a tiny Llama and its byte-level BPE tokenizer, trained
# locally on the corpus (with model.source: hf the user's own directory is the base).


rule tiny_model:
    input:
        src=W.sources("model"),
        corpus=W.corpus,
        env=W.env_marker("train"),
    output:
        directory("results/{model}/base/hf"),
    log:
        "logs/{model}/tiny_model.log",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=2000,
    params:
        llmbuild=W.llmbuild("train"),
        flags=W.tiny_flags(),
    shell:
        "{params.llmbuild} model tiny --input {input.corpus} --output {output}"
        " {params.flags} > {log} 2>&1"
