# One node per stack: .envs/<stack>/ready.json, built from the pinned envs/<stack>.txt.
# Rules list W.env_marker(<stack>) among their inputs, so a changed spec rebuilds that
# environment and reruns exactly the rules that use it. In envs.mode: external this rule is
# never needed: llmbuild comes from the active environment (conda:, container: or your own).
# The builder itself needs only the standard library, so it runs from src/ with the same
# interpreter the environments are made from. On a cluster the environments are built once,
# on the submitting host, into the shared filesystem: never once per job.


localrules:
    env,
    envs,


rule env:
    input:
        src=W.sources("envs"),
        spec="envs/{stack}.txt",
    output:
        marker=".envs/{stack}/ready.json",
    log:
        "logs/env/{stack}.log",
    conda:
        "../envs/driver.yaml"
    resources:
        mem_mb=2000,
    params:
        python=config["envs"]["python"],
        # the directory holding the llmbuild package, from its source files among the inputs
        src=lambda wildcards, input: os.path.dirname(os.path.dirname(input.src[0])),
    shell:
        "PYTHONPATH={params.src} {params.python} -m llmbuild envs create --spec {input.spec}"
        " --prefix .envs/{wildcards.stack}"
        " --marker {output.marker} --python {params.python} > {log} 2>&1"


rule envs:
    input:
        expand(
            ".envs/{stack}/ready.json",
            stack=["train", "quantize", W.serve_stack(), "bench", "plot"],
        ),
