"""ServeConfig validation and build_argv: pure, no vLLM needed."""

from __future__ import annotations

from dataclasses import fields

import pytest

from llmbuild.errors import UserError
from llmbuild.schema import default, node
from llmbuild.serve.config import (
    BOOT_MODULE,
    DEFAULT_CPU_KV_CACHE_GIB,
    DTYPES,
    SERVER_MODULE,
    ServeConfig,
    build_argv,
    child_env,
)

pytestmark = pytest.mark.unit


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_minimal_cpu_argv_gets_the_default_kv_cache():
    argv = build_argv(ServeConfig(model="/m"), "127.0.0.1", 8123, python="py")
    assert argv == [
        "py",
        "-m",
        BOOT_MODULE,
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--model",
        "/m",
        "--kv-cache-memory-bytes",
        str(int(DEFAULT_CPU_KV_CACHE_GIB * 2**30)),
        "--distributed-executor-backend",
        "uni",
    ]


def test_one_cpu_rank_runs_in_the_engine_process_unless_told_otherwise():
    one = ServeConfig(model="/m")
    argv = build_argv(one, "h", 1, python="py")
    assert flag_value(argv, "--distributed-executor-backend") == "uni"
    assert child_env(one, {})["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    for cfg in (
        ServeConfig(model="/m", device="cuda"),
        ServeConfig(model="/m", tensor_parallel_size=2),
        ServeConfig(model="/m", extra_args=("--distributed-executor-backend=mp",)),
    ):
        argv = build_argv(cfg, "h", 1, python="py")
        assert argv.count("--distributed-executor-backend") == 0, cfg
        assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in child_env(cfg, {}), cfg


def test_a_cpu_engine_is_forked_from_a_preloaded_fork_server_unless_told_otherwise():
    assert build_argv(ServeConfig(model="/m"), "h", 1, python="py")[2] == BOOT_MODULE
    for cfg in (
        ServeConfig(model="/m", preload_engine=False),
        ServeConfig(model="/m", device="cuda"),
        ServeConfig(model="/m", extra_args=("--numa-bind",)),
        ServeConfig(model="/m", extra_args=("--numa-bind=true",)),
    ):
        assert build_argv(cfg, "h", 1, python="py")[2] == SERVER_MODULE, cfg


def test_cuda_leaves_memory_to_vllm():
    argv = build_argv(ServeConfig(model="/m", device="cuda"), "127.0.0.1", 1, python="py")
    assert "--kv-cache-memory-bytes" not in argv
    assert "--gpu-memory-utilization" not in argv


def test_every_knob_maps_to_its_flag():
    cfg = ServeConfig(
        model="/models/llama",
        device="cuda",
        served_model_name="llama-w8a8",
        dtype="bfloat16",
        max_num_seqs=256,
        max_model_len=4096,
        max_num_batched_tokens=8192,
        tensor_parallel_size=2,
        block_size=128,
        gpu_memory_utilization=0.9,
        kv_cache_dtype="fp8",
        quantization="compressed-tensors",
        chat_template="/t/chat.jinja",
        trust_remote_code=True,
        enable_prefix_caching=True,
        enforce_eager=True,
        seed=7,
        speculative_config='{"method": "ngram", "num_speculative_tokens": 4}',
        extra_args=("--disable-log-stats",),
    )
    argv = build_argv(cfg, "127.0.0.1", 9000, python="py")
    expected = {
        "--served-model-name": "llama-w8a8",
        "--dtype": "bfloat16",
        "--max-num-seqs": "256",
        "--max-model-len": "4096",
        "--max-num-batched-tokens": "8192",
        "--tensor-parallel-size": "2",
        "--block-size": "128",
        "--gpu-memory-utilization": "0.9",
        "--kv-cache-dtype": "fp8",
        "--quantization": "compressed-tensors",
        "--chat-template": "/t/chat.jinja",
        "--seed": "7",
        "--speculative-config": '{"method": "ngram", "num_speculative_tokens": 4}',
        "--port": "9000",
        "--model": "/models/llama",
    }
    for flag, value in expected.items():
        assert flag_value(argv, flag) == value, flag
    for switch in ("--trust-remote-code", "--enable-prefix-caching", "--enforce-eager"):
        assert switch in argv
    assert argv[-1] == "--disable-log-stats"
    assert "--kv-cache-memory-bytes" not in argv


def test_defaults_leave_vllm_defaults_alone():
    argv = build_argv(ServeConfig(model="/m"), "127.0.0.1", 1, python="py")
    for flag in ("--dtype", "--trust-remote-code", "--enable-prefix-caching", "--seed"):
        assert flag not in argv
    assert "--no-enable-prefix-caching" not in argv
    assert "--tensor-parallel-size" not in argv


def test_prefix_caching_off_is_explicit():
    argv = build_argv(ServeConfig(model="/m", enable_prefix_caching=False), "h", 1, python="py")
    assert "--no-enable-prefix-caching" in argv
    assert "--enable-prefix-caching" not in argv


def test_kv_cache_space_in_bytes():
    argv = build_argv(ServeConfig(model="/m", kv_cache_space_gib=0.25), "h", 1, python="py")
    assert flag_value(argv, "--kv-cache-memory-bytes") == str(2**28)


def test_gpu_memory_utilization_replaces_the_cpu_default():
    cfg = ServeConfig(model="/m", gpu_memory_utilization=0.3)
    assert cfg.kv_cache_space_gib is None
    argv = build_argv(cfg, "h", 1, python="py")
    assert flag_value(argv, "--gpu-memory-utilization") == "0.3"
    assert "--kv-cache-memory-bytes" not in argv


def test_lora_modules_enable_lora():
    cfg = ServeConfig(
        model="/m", lora_modules=["sql=/a/sql", "chat=/a/chat"], max_lora_rank=16, max_loras=2
    )
    argv = build_argv(cfg, "h", 1, python="py")
    i = argv.index("--lora-modules")
    assert argv[i - 1] == "--enable-lora"
    assert argv[i + 1 : i + 3] == ["sql=/a/sql", "chat=/a/chat"]
    assert flag_value(argv, "--max-lora-rank") == "16"
    assert flag_value(argv, "--max-loras") == "2"


def test_served_name_defaults_to_the_model_path():
    assert ServeConfig(model="/m/hf").served_name == "/m/hf"
    assert ServeConfig(model="/m/hf", served_model_name="tiny").served_name == "tiny"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"device": "tpu"}, "device"),
        ({"dtype": "fp8"}, "dtype"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"max_model_len": True}, "max_model_len"),
        ({"max_model_len": 512.0}, "max_model_len"),
        ({"tensor_parallel_size": -1}, "tensor_parallel_size"),
        ({"block_size": 0}, "block_size"),
        ({"seed": -3}, "seed"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization"),
        ({"kv_cache_space_gib": 0}, "kv_cache_space_gib"),
        ({"kv_cache_space_gib": 1, "gpu_memory_utilization": 0.5}, "kv_cache_space_gib"),
        ({"max_num_seqs": 64, "max_num_batched_tokens": 32}, "max_num_batched_tokens"),
        ({"served_model_name": "my model"}, "served_model_name"),
        ({"quantization": "w8a8; rm -rf /"}, "quantization"),
        ({"trust_remote_code": "yes"}, "trust_remote_code"),
        ({"lora_modules": ["no-equals-sign"]}, "lora_modules"),
        ({"max_lora_rank": 8}, "lora_modules"),
        ({"speculative_config": "ngram"}, "speculative_config"),
        ({"speculative_config": "[1, 2]"}, "speculative_config"),
        ({"device": "cuda", "cpu_omp_threads_bind": "0-3"}, "cpu_omp_threads_bind"),
        ({"extra_args": ["--port=1234"]}, "extra_args"),
        ({"extra_args": ["--max-num-seqs", "4"]}, "extra_args"),
        ({"model": "  "}, "model"),
    ],
)
def test_bad_knobs_are_rejected_naming_the_field(kwargs, field):
    kwargs = {"model": "/m", **kwargs}
    with pytest.raises(UserError) as info:
        ServeConfig(**kwargs)
    assert str(info.value).startswith(f"{field}: ")


def test_extra_args_message_names_the_knob():
    with pytest.raises(UserError, match="max_num_seqs knob"):
        ServeConfig(model="/m", extra_args=["--max-num-seqs=4"])
    with pytest.raises(UserError, match="--port is chosen by `llmbuild serve run`"):
        ServeConfig(model="/m", extra_args=["--port", "1"])


def test_child_env_is_offline_unbuffered_and_drops_the_legacy_kv_variable():
    base = {"PATH": "/bin", "VLLM_CPU_KVCACHE_SPACE": "40", "HF_HUB_OFFLINE": "0"}
    env = child_env(ServeConfig(model="/m", cpu_omp_threads_bind="nobind"), base)
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HF_HUB_OFFLINE"] == "0"  # the caller's choice wins
    assert env["PATH"] == "/bin"
    assert base["VLLM_CPU_KVCACHE_SPACE"] == "40"  # not mutated


def test_child_env_drops_a_service_jobs_zero_thread_count():
    # Snakemake gives a job of threads 0 (a service) OMP_NUM_THREADS=0, which libgomp refuses
    base = {"OMP_NUM_THREADS": "0", "MKL_NUM_THREADS": "0", "OPENBLAS_NUM_THREADS": "3"}
    env = child_env(ServeConfig(model="/m"), base)
    assert "OMP_NUM_THREADS" not in env and "MKL_NUM_THREADS" not in env
    assert env["OPENBLAS_NUM_THREADS"] == "3"


def test_dtype_choices_are_the_schemas():
    assert DTYPES == tuple(node("serve.dtype")["enum"])


def test_serve_run_flags_are_the_fields_with_the_schemas_defaults():
    from llmbuild.cli import build_parser
    from llmbuild.serve.cli import _config_from_args

    parser = build_parser("serve")
    args = parser.parse_args(["serve", "run", "--input", "/m", "--endpoint", "/e"])
    keys = set(node("serve")["properties"]) - {"stack"}  # stack picks the environment
    names = {f.name for f in fields(ServeConfig)}
    assert keys <= names
    for key in keys:
        assert getattr(args, key) == default(f"serve.{key}"), key
    assert args.model == "/m" and args.lora_modules == [] and args.extra_args == []
    on = parser.parse_args(
        ["serve", "run", "--input", "/m", "--endpoint", "/e", "--enable-prefix-caching"]
        + ["--lora-module", "a=/a", "--lora-module", "b=/b", "--vllm-arg=--disable-log-stats"]
    )
    cfg = _config_from_args(on)
    assert cfg.enable_prefix_caching is True and cfg.lora_modules == ("a=/a", "b=/b")
    assert cfg.extra_args == ("--disable-log-stats",)
    assert cfg.max_num_seqs == default("serve.max_num_seqs")
