"""The device backend under megatron-core: ``cpu`` | ``cuda`` | ``npu``, chosen by one setting.

``init_backend(device, tp=, pp=, seed=)`` is the only entry point. It

- cpu: applies the CPU adaptor below, initialises torch.distributed with gloo;
- cuda: nothing to adapt, nccl;
- npu: imports ``torch_npu`` and MindSpeed's megatron adaptor (which patches megatron-core
  for Ascend itself), hccl; a missing package is one clear UserError;

then ``megatron.core.parallel_state.initialize_model_parallel(tp, pp)`` and the model-parallel
RNG seeds.

The CPU adaptor (megatron-core 0.16.1 assumes CUDA in a few places; CPU-only torch raises
"Torch not compiled with CUDA enabled" there). Four patches, nothing else:

1. ``_CpuTorch``: in the listed megatron modules only, the module-global name ``torch`` is
   replaced by a thin proxy that forwards every attribute to torch, except that factory
   functions (``zeros``, ``ones``, ``empty``, ``tensor``, ``full``, ``arange``) map a CUDA
   ``device=`` to cpu, and ``torch.cuda.current_device()`` answers ``cpu`` (``synchronize``,
   ``empty_cache`` are no-ops). The sites it covers, by module:

   - models.common.embeddings.rotary_pos_embedding: ``RotaryEmbedding.get_emb`` moves
     ``inv_freq`` to ``torch.cuda.current_device()`` on first use;
   - transformer.utils: ``get_default_causal_mask`` builds the causal mask on "cuda";
   - utils: ``GlobalMemoryBuffer.get_tensor`` (the attention score buffer) allocates on
     ``torch.cuda.current_device()``;
   - pipeline_parallel.schedules: every schedule counts tokens in a "cuda" tensor;
   - pipeline_parallel.p2p_communication (pp > 1): receive buffers are allocated on
     ``torch.cuda.current_device()``, sends end with ``torch.cuda.synchronize()``;
   - optimizer.optimizer: ``FP32Optimizer`` keeps its loss scale in a "cuda" tensor;
   - optimizer.clip_grads: the grad-norm accumulators are "cuda" tensors;
   - distributed.param_and_grad_buffer: the DDP grad buffers are allocated on
     ``torch.cuda.current_device()``;
   - dist_checkpointing.strategies.filesystem_async: ``preload_tensors`` (torch_dist save)
     calls ``torch.cuda.synchronize()``;
   - dist_checkpointing.strategies.state_dict_saver: the save's failure flag is broadcast
     from a tensor on ``torch.cuda.current_device()``;
   - tensor_parallel.mappings (tp > 1): the all-gather buffers (``parallel_output=False``
     logits, sequence parallelism) are allocated on ``torch.cuda.current_device()``.

2. ``_CpuRNGStatesTracker``: megatron's ``CudaRNGStatesTracker`` saves and restores the CUDA
   generator (``torch.cuda.get_rng_state``/``_C._cuda_setRNGState``); on CPU the tracker is
   replaced by a subclass whose named states are CPU generator states, installed as megatron's
   global tracker (``tensor_parallel.random._CUDA_RNG_STATE_TRACKER``).

3. ``clip_grad_by_total_norm_fp32`` (as named in megatron.core.optimizer.optimizer, where every
   optimizer calls it) asserts ``param.grad.type() == 'torch.cuda.FloatTensor'``; on CPU it is
   replaced by the same scaling (``grads *= max_norm / (total_norm + 1e-6)`` when < 1) without
   the assertion.

4. ``LanguageModule.setup_embeddings_and_output_layer`` (tied embeddings, pp > 1) moves the
   last stage's copy of the embedding with ``weight.data.cuda()`` before all-reducing it; on CPU
   the method runs with ``Tensor.cuda`` answering the tensor itself, for that call only.

Not patched, and not needed in fp32: ``Float16OptimizerWithFloat16Params`` and the
distributed optimizer check ``param.type() == 'torch.cuda.FloatTensor'`` (so bf16/fp16 and
``use_distributed_optimizer`` are refused on CPU by the callers).

The patches were written against megatron-core 0.16.1 and refuse any other version.

Over 400 lines on purpose: a sixth of it is this list of the patched megatron-core sites, kept
beside the patches so that an upgrade reviews them together, and the backends and the adaptor
are one concern (a device selected = its patches applied), with one entry point.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any

from llmbuild.errors import UserError

DEVICES = ("cpu", "cuda", "npu")
MEGATRON_CORE_VERSION = "0.16.1"

# Modules whose global ``torch`` is replaced by the CPU proxy (see the module docstring).
CPU_PROXY_MODULES = (
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.transformer.utils",
    "megatron.core.utils",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.tensor_parallel.mappings",
)


@dataclass(frozen=True)
class Backend:
    """What ``init_backend`` set up: the torch device to put tensors on, and the layout."""

    device: str
    torch_device: Any
    tp: int
    pp: int
    rank: int
    world_size: int

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp)


def quiet_warnings() -> None:
    """For CLI handlers: silence megatron/torch import-time chatter (no Apex / TE, deprecations)
    and transformers' progress bars, so logs show our own lines."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"megatron\.")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(megatron|torch)\.")
    # transformers reads these when it is imported; importing it here would cost seconds in
    # commands that never use it
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise UserError(
            f"unknown device {device!r}; use one of {', '.join(DEVICES)}", field="--device"
        )
    return device


# --------------------------------------------------------------------------- CPU adaptor


def _is_cuda(device: Any) -> bool:
    import torch

    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, int) and not isinstance(device, bool)


class _CpuCuda:
    """``torch.cuda`` as seen by the proxied megatron modules on a CPU-only machine."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def current_device(self) -> Any:
        import torch

        return torch.device("cpu")

    def synchronize(self, *args: Any, **kwargs: Any) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def is_available(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _CpuTorch:
    """``torch`` as seen by the proxied megatron modules: CUDA device arguments become cpu."""

    _FACTORIES = ("zeros", "ones", "empty", "tensor", "full", "arange")

    def __init__(self, real: Any) -> None:
        self._real = real
        self.cuda = _CpuCuda(real.cuda)
        for name in self._FACTORIES:
            setattr(self, name, self._wrap(getattr(real, name)))

    @staticmethod
    def _wrap(fn: Any) -> Any:
        def factory(*args: Any, **kwargs: Any) -> Any:
            if _is_cuda(kwargs.get("device")):
                kwargs["device"] = "cpu"
            return fn(*args, **kwargs)

        factory.__wrapped__ = fn  # type: ignore[attr-defined]
        return factory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _cpu_rng_tracker_class() -> type:
    from megatron.core.tensor_parallel import random as mrandom

    class _CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """Named RNG states kept as CPU generator states; ``fork`` swaps the CPU generator."""

        def add(self, name: str, seed: int) -> None:
            import torch

            if seed in self.seeds_:
                raise RuntimeError(f"seed {seed} already exists")
            if name in self.states_:
                raise RuntimeError(f"rng state {name} already exists")
            self._is_initialized = True
            self.seeds_.add(seed)
            gen = torch.Generator()
            gen.manual_seed(seed)
            self.states_[name] = gen.get_state()

        @contextlib.contextmanager
        def fork(self, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):  # type: ignore[override]
            import torch

            if name not in self.states_:
                raise RuntimeError(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    return _CpuRNGStatesTracker


def _clip_grad_by_total_norm_fp32_cpu(
    parameters: Any, max_norm: float, total_norm: float, use_decoupled_grad: bool = False
) -> None:
    """megatron's clip_grad_by_total_norm_fp32 minus its 'torch.cuda.FloatTensor' assertion."""
    import torch

    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if grads and clip_coeff < 1.0:
        torch._foreach_mul_(grads, clip_coeff)


def check_megatron_version() -> str:
    from megatron.core import package_info

    version = package_info.__version__
    if version != MEGATRON_CORE_VERSION:
        raise UserError(
            f"the CPU adaptor was written for megatron-core {MEGATRON_CORE_VERSION}, found "
            f"{version}; install envs/train.txt or review llmbuild/mcore/device.py",
            field="megatron-core",
        )
    return version


_CPU_ADAPTED = False


def apply_cpu_adaptor() -> None:
    """Apply the CPU patches above (idempotent)."""
    global _CPU_ADAPTED
    if _CPU_ADAPTED:
        return
    import torch

    check_megatron_version()
    proxy = _CpuTorch(torch)
    for name in CPU_PROXY_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "torch", None) is not torch:
            raise UserError(
                f"{name} has no global 'torch' to adapt; the adaptor does not match "
                "this megatron-core",
                field="megatron-core",
            )
        module.torch = proxy  # type: ignore[attr-defined]
    from megatron.core.optimizer import optimizer as moptimizer

    moptimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32_cpu
    from megatron.core.models.common.language_module import language_module as lm

    lm.LanguageModule.setup_embeddings_and_output_layer = _tensor_cuda_is_identity(
        lm.LanguageModule.setup_embeddings_and_output_layer
    )
    _CPU_ADAPTED = True


def _tensor_cuda_is_identity(fn: Any) -> Any:
    """``fn`` with ``torch.Tensor.cuda`` returning the tensor itself while it runs (patch 4)."""
    import functools

    import torch

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        saved = torch.Tensor.cuda
        torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
        try:
            return fn(*args, **kwargs)
        finally:
            torch.Tensor.cuda = saved  # type: ignore[method-assign]

    return wrapper


def seed_model_parallel_rng(seed: int, device: str) -> None:
    """Seed torch and megatron's named model-parallel RNG states (the tracker)."""
    import torch
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as mrandom

    torch.manual_seed(seed)
    if device != "cpu":
        mrandom.model_parallel_cuda_manual_seed(seed)
        return
    tracker = _cpu_rng_tracker_class()()
    mrandom._CUDA_RNG_STATE_TRACKER = tracker
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    # The same offsets as model_parallel_cuda_manual_seed.
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + tp_rank)
    tracker.add(mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + 1024)


# --------------------------------------------------------------------------- backends


def _import_npu() -> None:
    try:
        import torch_npu  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"device 'npu' needs torch_npu ({exc}); install the Ascend stack "
            "(CANN, torch_npu) or use --device cpu|cuda",
            field="--device",
        ) from exc
    try:
        import mindspeed.megatron_adaptor  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"device 'npu' needs MindSpeed ({exc}); install mindspeed matching "
            "megatron-core, or use --device cpu|cuda",
            field="--device",
        ) from exc


def _init_distributed(backend: str) -> tuple[int, int]:
    import torch

    dist = torch.distributed
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world == 1 and "MASTER_ADDR" not in os.environ:
        # One process: an in-memory store, no port to pick or to collide on.
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    else:
        dist.init_process_group(backend, rank=rank, world_size=world)  # torchrun's env://
    return rank, world


def init_backend(
    device: str, *, tp: int = 1, pp: int = 1, seed: int = 1234, threads: int | None = None
) -> Backend:
    """Select the device stack, start torch.distributed and megatron's parallel state."""
    check_device(device)
    if tp < 1 or pp < 1:
        raise UserError(
            f"tensor/pipeline parallel sizes must be >= 1, got tp={tp} pp={pp}", field="--tp/--pp"
        )
    import torch

    if device == "cpu":
        apply_cpu_adaptor()
        if threads:
            torch.set_num_threads(threads)
        dist_backend, torch_device = "gloo", torch.device("cpu")
    elif device == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                "device 'cuda' but torch sees no CUDA device; use --device cpu", field="--device"
            )
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist_backend, torch_device = "nccl", torch.device("cuda", local)
    else:
        _import_npu()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.npu.set_device(local)  # type: ignore[attr-defined]
        dist_backend, torch_device = "hccl", torch.device("npu", local)

    rank, world = _init_distributed(dist_backend)
    if world % (tp * pp):
        raise UserError(
            f"world size {world} is not divisible by tp*pp = {tp * pp}", field="--tp/--pp"
        )
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp
        )
    seed_model_parallel_rng(seed, device)
    return Backend(
        device=device, torch_device=torch_device, tp=tp, pp=pp, rank=rank, world_size=world
    )


def shutdown() -> None:
    """Tear down megatron's parallel state and the process group (tests, repeated runs)."""
    import torch
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
