"""choose_dtype and friends: the dtype each variant is served with per CPU and device.

Pure (no vLLM): CPUs come as /proc/cpuinfo text, models as config.json files whose
quantization_config is what llm-compressor 0.14 / compressed-tensors 0.19 wrote for our tiny
Llama (tests/serve/quant_configs/, made with tests/serve/quant_tiny_model.py).

Over 400 lines because it is the decision table itself: four CPUs x five variants x the dtypes,
each row with the vLLM kernel fact behind it.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from llmbuild.errors import UserError
from llmbuild.serve import dtype as dtypes
from llmbuild.serve.config import ServeConfig, build_argv, resolve_dtype
from llmbuild.serve.dtype import (
    CpuFeatures,
    choose_dtype,
    cpu_features,
    model_dtype,
    model_quantization,
)

pytestmark = pytest.mark.unit

HERE = Path(__file__).resolve().parent
QUANT_CONFIGS = HERE / "quant_configs"

SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology \
cpuid pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c \
rdrand hypervisor lahf_lm abm 3dnowprefetch fsgsbase bmi1 avx2 smep bmi2 erms invpcid avx512f \
avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl \
xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd arat avx512vbmi umip pku ospke \
waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq rdpid \
movdiri movdir64b fsrm md_clear serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8 \
flush_l1d arch_capabilities

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2
"""

#: This machine (KVM guest on Zen 4 EPYC): AVX-512 with bf16, no AMX.
AMD_EPYC = """\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model name\t: AMD EPYC
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl \
xtopology nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid \
sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor \
lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext vmmcall \
fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq adx smap avx512ifma \
clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni \
avx512_bf16 clzero xsaveerptr arat avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq \
avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm avx512_vp2intersect
"""

#: Zen 2: AVX2 only.
AVX2_ONLY = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7502 32-Core Processor
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl \
pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand lahf_lm \
abm sse4a misalignsse 3dnowprefetch bmi1 avx2 smep bmi2 rdseed adx smap clflushopt clwb \
sha_ni xsaveopt xsavec xgetbv1 xsaves clzero rdpid
"""

#: Graviton 3 (Neoverse V1): FEAT_BF16.
AARCH64 = """\
processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs \
paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""

#: Graviton 2 (Neoverse N1): fp16 arithmetic, no bf16.
AARCH64_NO_BF16 = """\
processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""

CPUS = {
    "spr": cpu_features(SAPPHIRE_RAPIDS),
    "epyc": cpu_features(AMD_EPYC),
    "avx2": cpu_features(AVX2_ONLY),
    "aarch64": cpu_features(AARCH64),
}

BASE_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "num_hidden_layers": 4,
    "vocab_size": 512,
    "dtype": "float32",
}


def write_model(root: Path, name: str, dtype: str = "float32", quant: str | dict | None = None):
    d = root / name
    d.mkdir()
    cfg = dict(BASE_CONFIG, dtype=dtype)
    if isinstance(quant, str):
        cfg["quantization_config"] = json.loads((QUANT_CONFIGS / f"{quant}.json").read_text())
    elif quant is not None:
        cfg["quantization_config"] = quant
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    (d / "tokenizer.json").write_text("{}")
    return d


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "fp32": write_model(root, "fp32"),
        "bf16": write_model(root, "bf16", "bfloat16"),
        "w8a8": write_model(root, "w8a8", quant="w8a8"),
        "w4a16": write_model(root, "w4a16", quant="w4a16"),
        "fp8": write_model(root, "fp8", quant="fp8"),
    }


# --- cpu_features -------------------------------------------------------------------------


def test_sapphire_rapids_flags():
    f = CPUS["spr"]
    assert f.arch == "x86_64" and f.model_name == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512f"} <= f
    assert f.has_amx and f.has_avx512_bf16 and f.has_bf16
    assert "avx512_fp16" in f  # the first processor's flags, not the later short line


def test_epyc_avx2_and_arm_flags():
    assert CPUS["epyc"].summary() == {
        "model": "AMD EPYC",
        "arch": "x86_64",
        "has_amx": False,
        "has_avx512_bf16": True,
    }
    assert not CPUS["avx2"].has_avx512 and not CPUS["avx2"].has_bf16
    arm = CPUS["aarch64"]
    assert arm.arch == "aarch64" and arm.has_bf16 and not arm.has_amx
    assert arm.model_name == "Arm implementer 0x41 part 0xd40"
    # "amx_tile" means nothing off x86
    assert not CpuFeatures({"amx_tile"}, arch="aarch64").has_amx


def test_this_machine_and_given_arch():
    f = cpu_features()
    machine = platform.machine().lower()
    assert f.arch == {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    assert cpu_features("flags : avx2", arch="x86_64").arch == "x86_64"
    assert cpu_features("processor : 0\ncpu : POWER10 (architected)\n").arch == "ppc64le"
    assert cpu_features("").arch == "unknown"


# --- config.json ----------------------------------------------------------------------------


def test_model_quantization_of_llm_compressor_configs(models):
    assert model_quantization(models["fp32"]) is None
    w8a8 = model_quantization(models["w8a8"])
    assert (w8a8.kind, w8a8.method, w8a8.weight_bits) == ("int8-w8a8", "compressed-tensors", 8)
    assert w8a8.input_symmetric is True and w8a8.input_dynamic is True
    assert w8a8.format == "int-quantized" and w8a8.kv_cache is None
    w4 = model_quantization(models["w4a16"])
    assert (w4.kind, w4.weight_bits, w4.format) == ("weight-only", 4, "pack-quantized")
    fp8 = model_quantization(models["fp8"] / "config.json")
    assert (fp8.kind, fp8.weight_strategy, fp8.format) == ("fp8", "channel", "float-quantized")


def test_model_quantization_other_methods():
    assert model_quantization({"quantization_config": {"quant_method": "fp8"}}).kind == "fp8"
    awq = model_quantization({"quantization_config": {"quant_method": "awq", "bits": 4}})
    assert (awq.kind, awq.weight_bits) == ("weight-only", 4)
    kv = {
        "quant_method": "compressed-tensors",
        "config_groups": {},
        "kv_cache_scheme": {"type": "float", "num_bits": 8, "strategy": "tensor"},
    }
    q = model_quantization({"quantization_config": kv})
    assert (q.kind, q.kv_cache) == ("other", "float8")
    nvfp4 = {
        "quant_method": "compressed-tensors",
        "config_groups": {
            "g": {"weights": {"type": "float", "num_bits": 4}, "input_activations": None}
        },
    }
    assert model_quantization({"quantization_config": nvfp4}).kind == "other"


def test_model_dtype_keys():
    assert model_dtype({"dtype": "bfloat16"}) == "bfloat16"
    assert model_dtype({"torch_dtype": "float16"}) == "float16"
    assert model_dtype({"text_config": {"torch_dtype": "bfloat16"}}) == "bfloat16"
    assert model_dtype({}) == "float32"  # transformers' default


def test_unreadable_config_is_one_line(tmp_path):
    with pytest.raises(UserError, match="lacks config.json"):
        model_dtype(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(UserError, match="cannot read config.json") as exc:
        model_quantization(tmp_path)
    assert "\n" not in str(exc.value)


# --- choose_dtype: auto ---------------------------------------------------------------------

AUTO = {  # model -> cpu -> dtype
    "fp32": {"spr": "float32", "epyc": "float32", "avx2": "float32", "aarch64": "float32"},
    "bf16": {"spr": "bfloat16", "epyc": "bfloat16", "avx2": "bfloat16", "aarch64": "bfloat16"},
    "w8a8": {"spr": "bfloat16", "epyc": "float32", "avx2": "float32", "aarch64": "float32"},
    "w4a16": {"spr": "bfloat16", "epyc": "bfloat16", "avx2": "bfloat16", "aarch64": "bfloat16"},
    "fp8": {"spr": "bfloat16", "epyc": "bfloat16", "avx2": "bfloat16", "aarch64": "bfloat16"},
}


@pytest.mark.parametrize("cpu", sorted(CPUS))
@pytest.mark.parametrize("model", sorted(AUTO))
def test_auto(models, model, cpu):
    choice = choose_dtype("auto", models[model], "cpu", CPUS[cpu])
    assert choice.dtype == AUTO[model][cpu]
    assert choice.reason and "\n" not in choice.reason


def test_auto_reasons(models):
    spr = choose_dtype("auto", models["w8a8"], "cpu", CPUS["spr"])
    assert spr.reason == "vLLM's int8 W8A8 kernel on this AMX CPU takes 16-bit activations"
    epyc = choose_dtype("auto", models["w8a8"], "cpu", CPUS["epyc"])
    assert "oneDNN" in epyc.reason
    fp32 = choose_dtype("auto", models["fp32"], "cpu", CPUS["spr"])
    assert "vLLM's auto would downcast it to bfloat16" in fp32.reason


def test_w8a8_in_a_16bit_model_keeps_its_dtype(tmp_path):
    m = write_model(tmp_path, "w8a8-fp16", "float16", quant="w8a8")
    assert choose_dtype("auto", m, "cpu", CPUS["spr"]).dtype == "float16"
    assert choose_dtype("auto", m, "cpu", CPUS["epyc"]).dtype == "float16"


def test_asymmetric_int8_activations_take_onednn_even_with_amx(tmp_path):
    qc = json.loads((QUANT_CONFIGS / "w8a8.json").read_text())
    qc["config_groups"]["group_0"]["input_activations"]["symmetric"] = False
    m = write_model(tmp_path, "w8a8-asym", quant=qc)
    assert choose_dtype("auto", m, "cpu", CPUS["spr"]).dtype == "float32"
    assert choose_dtype("float32", m, "cpu", CPUS["spr"]).dtype == "float32"


def test_no_bf16_cpu_gets_float16_for_16bit_kernels(tmp_path, models):
    graviton2 = cpu_features(AARCH64_NO_BF16)
    assert choose_dtype("auto", models["w4a16"], "cpu", graviton2).dtype == "float16"
    # AMX without any bf16 (hypothetical): the int8 AMX kernel takes half too
    amx_fp16 = CpuFeatures({"amx_tile", "amx_int8", "amx_fp16", "avx512f"}, arch="x86_64")
    assert choose_dtype("auto", models["w8a8"], "cpu", amx_fp16).dtype == "float16"
    gemma = {**BASE_CONFIG, "model_type": "gemma2"}
    gemma["quantization_config"] = json.loads((QUANT_CONFIGS / "w4a16.json").read_text())
    assert choose_dtype("auto", gemma, "cpu", graviton2).dtype == "bfloat16"


def test_ppc64le_w4a16_takes_bfloat16(models):
    power = CpuFeatures({"vsx", "altivec"}, model_name="POWER10", arch="ppc64le")
    assert choose_dtype("auto", models["w4a16"], "cpu", power).dtype == "bfloat16"


def test_devices(models):
    assert choose_dtype("auto", models["w8a8"], "cuda").dtype == "bfloat16"
    assert choose_dtype("auto", models["fp8"], "npu").dtype == "bfloat16"
    assert choose_dtype("auto", models["fp32"], "cuda").dtype == "float32"
    assert choose_dtype("auto", models["bf16"], "cuda").dtype == "bfloat16"
    with pytest.raises(UserError, match="cutlass"):
        choose_dtype("float32", models["w8a8"], "cuda")
    assert choose_dtype("float32", models["w8a8"], "npu").dtype == "float32"  # not verifiable


# --- choose_dtype: pinned -------------------------------------------------------------------

REFUSED_FLOAT32 = {  # (model, cpu) pairs whose kernels refuse float32 activations
    ("w8a8", "spr"),
    ("w4a16", "spr"),
    ("w4a16", "epyc"),
    ("w4a16", "avx2"),
    ("w4a16", "aarch64"),
}


@pytest.mark.parametrize("cpu", sorted(CPUS))
@pytest.mark.parametrize("model", sorted(AUTO))
@pytest.mark.parametrize("pinned", ["float32", "bfloat16", "float16"])
def test_pinned(models, model, cpu, pinned):
    if pinned == "float32" and (model, cpu) in REFUSED_FLOAT32:
        with pytest.raises(UserError) as exc:
            choose_dtype(pinned, models[model], "cpu", CPUS[cpu])
        msg = str(exc.value)
        assert "\n" not in msg
        assert msg.startswith(f"{models[model]}: serve.dtype: float32 cannot serve")
        assert "set serve.dtype to auto or bfloat16" in msg
        return
    choice = choose_dtype(pinned, models[model], "cpu", CPUS[cpu])
    assert choice.dtype == pinned
    assert choice.reason.startswith("pinned by serve.dtype")


def test_pinned_float32_w8a8_on_amx_message(models):
    with pytest.raises(UserError) as exc:
        choose_dtype("float32", models["w8a8"], "cpu", CPUS["spr"])
    assert str(exc.value) == (
        f"{models['w8a8']}: serve.dtype: float32 cannot serve this int8-w8a8 "
        "(compressed-tensors) variant on this CPU (Intel(R) Xeon(R) Platinum 8480+, x86_64, "
        "AMX): vLLM's int8 W8A8 kernel on this AMX CPU takes 16-bit activations; set "
        "serve.dtype to auto or bfloat16"
    )


def test_fp8_float32_refused_where_only_16bit_kernels_serve_it(tmp_path):
    def fp8(strategy: str, dynamic: bool) -> dict:
        qc = json.loads((QUANT_CONFIGS / "fp8.json").read_text())
        qc["config_groups"]["group_0"]["weights"]["strategy"] = strategy
        qc["config_groups"]["group_0"]["input_activations"]["dynamic"] = dynamic
        return {**BASE_CONFIG, "quantization_config": qc}

    spr = CPUS["spr"]
    static_tensor = fp8("tensor", dynamic=False)  # the AMX per-tensor kernel
    with pytest.raises(UserError, match="fp8 kernel on this AMX CPU"):
        choose_dtype("float32", static_tensor, "cpu", spr)
    with pytest.raises(UserError, match="fp8 kernel on this AMX CPU"):
        choose_dtype("float32", fp8("block", dynamic=True), "cpu", spr)
    dyn_channel = fp8("channel", dynamic=True)  # torch._scaled_mm path
    assert choose_dtype("float32", dyn_channel, "cpu", spr).dtype == "float32"
    amx_fp8 = CpuFeatures(spr | {"amx_fp8"}, model_name="Xeon 7", arch="x86_64")
    with pytest.raises(UserError):
        choose_dtype("float32", dyn_channel, "cpu", amx_fp8)
    assert choose_dtype("float32", static_tensor, "cpu", CPUS["epyc"]).dtype == "float32"
    native = {**BASE_CONFIG, "quantization_config": {"quant_method": "fp8"}}
    with pytest.raises(UserError, match="fp8 quantization accepts only"):
        choose_dtype("float32", native, "cpu", CPUS["epyc"])
    awq = {**BASE_CONFIG, "quantization_config": {"quant_method": "awq", "bits": 4}}
    with pytest.raises(UserError, match="AWQ"):
        choose_dtype("float32", awq, "cuda")


def test_float16_refused_for_gemma2():
    gemma = {**BASE_CONFIG, "model_type": "gemma2"}
    with pytest.raises(UserError, match="refuses float16 for model type gemma2"):
        choose_dtype("float16", gemma, "cpu", CPUS["epyc"], path="/m/gemma")
    assert choose_dtype("bfloat16", gemma, "cpu", CPUS["epyc"]).dtype == "bfloat16"


def test_unknown_pinned_dtype():
    with pytest.raises(UserError, match="unknown dtype 'fp64'"):
        choose_dtype("fp64", BASE_CONFIG, "cpu", CPUS["epyc"])


# --- wiring: resolve_dtype and build_argv ------------------------------------------------------


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize(("cpu", "dtype"), [("spr", "bfloat16"), ("epyc", "float32")])
def test_build_argv_carries_the_resolved_dtype(models, cpu, dtype):
    cfg, choice = resolve_dtype(ServeConfig(model=str(models["w8a8"])), CPUS[cpu])
    assert cfg.dtype == choice.dtype == dtype
    argv = build_argv(cfg, "127.0.0.1", 8000, python="py")
    assert flag_value(argv, "--dtype") == dtype


def test_resolve_dtype_pinned_error_names_the_model(models):
    with pytest.raises(UserError, match=f"^{models['w8a8']}: serve.dtype: float32"):
        resolve_dtype(ServeConfig(model=str(models["w8a8"]), dtype="float32"), CPUS["spr"])


def test_serve_cpu_path_helpers():
    assert dtypes.int8_path(CPUS["spr"]) == ("bfloat16", "AMX kernel int8_scaled_mm_with_quant")
    assert dtypes.int8_path(CPUS["epyc"]) == ("float32", "oneDNN kernel")
    assert dtypes.w4a16_path(CPUS["avx2"])[0] is None
    assert dtypes.w4a16_path(CPUS["spr"]) == ("bfloat16", "cpu_gemm_wna16, isa amx")


# --- the CLI: `serve cpu` and the --x/--no-x switches -------------------------------------------


def _llmbuild(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmbuild", *argv], capture_output=True, text=True, timeout=60
    )


def test_serve_cpu_prints_one_line():
    proc = _llmbuild("serve", "cpu")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cpu: ")
    f = cpu_features()
    assert f"AMX: {'yes' if f.has_amx else 'no'}" in lines[0]
    assert "int8 W8A8 served in" in lines[0]


def test_serve_cpu_json_and_given_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(SAPPHIRE_RAPIDS)
    proc = _llmbuild("serve", "cpu", "--cpuinfo", str(info))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "cpu: Intel(R) Xeon(R) Platinum 8480+ (x86_64); AMX: yes; AVX-512 bf16: yes; "
        "int8 W8A8 served in bfloat16 (AMX kernel int8_scaled_mm_with_quant)"
    )
    info.write_text(AMD_EPYC)
    data = json.loads(_llmbuild("serve", "cpu", "--json", "--cpuinfo", str(info)).stdout)
    assert data["has_amx"] is False and data["has_avx512_bf16"] is True
    assert (data["int8_w8a8_dtype"], data["int8_w8a8_kernel"]) == ("float32", "oneDNN kernel")
    missing = _llmbuild("serve", "cpu", "--cpuinfo", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def test_boolean_switches_take_no_forms():
    from llmbuild.cli import build_parser
    from llmbuild.serve.cli import _config_from_args

    base = ["serve", "run", "--input", "/m", "--endpoint", "/e"]
    parser = build_parser("serve")
    off = _config_from_args(parser.parse_args(base))
    assert (off.enforce_eager, off.trust_remote_code) == (False, False)
    on = _config_from_args(parser.parse_args([*base, "--enforce-eager", "--trust-remote-code"]))
    assert (on.enforce_eager, on.trust_remote_code) == (True, True)
    no = parser.parse_args([*base, "--no-enforce-eager", "--no-trust-remote-code"])
    cfg = _config_from_args(no)
    assert (cfg.enforce_eager, cfg.trust_remote_code) == (False, False)
    argv = build_argv(cfg, "127.0.0.1", 1, python="py")
    assert "--enforce-eager" not in argv and "--trust-remote-code" not in argv
    assert parser.parse_args(base).dtype == "auto"


def test_kv_cache_only_scheme_keeps_the_model_dtype():
    kv = {
        "quant_method": "compressed-tensors",
        "config_groups": {},
        "kv_cache_scheme": {"type": "float", "num_bits": 8, "strategy": "tensor"},
    }
    cfg = {**BASE_CONFIG, "quantization_config": kv}
    assert choose_dtype("auto", cfg, "cuda").dtype == "float32"
    assert choose_dtype("float32", cfg, "cpu", CPUS["spr"]).dtype == "float32"
