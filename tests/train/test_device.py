"""The device backend selection and the CPU adaptor of megatron-core 0.16.1."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")

from llmbuild.errors import UserError  # noqa: E402
from llmbuild.mcore import device as D  # noqa: E402

pytestmark = pytest.mark.unit


def test_unknown_device_is_a_user_error():
    with pytest.raises(UserError, match="cpu, cuda, npu"):
        D.init_backend("tpu")


def test_npu_without_its_stack_fails_with_one_clear_line():
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch_npu is installed here")
    with pytest.raises(UserError) as exc:
        D.init_backend("npu")
    assert "torch_npu" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_a_user_error():
    with pytest.raises(UserError, match="no CUDA device"):
        D.init_backend("cuda")


def test_cpu_proxy_maps_cuda_devices_only():
    proxy = D._CpuTorch(torch)
    assert proxy.zeros(2, device="cuda").device.type == "cpu"
    assert proxy.tensor([1.0], device=torch.device("cuda", 0)).device.type == "cpu"
    assert proxy.empty(3, device=0).device.type == "cpu"
    assert proxy.cuda.current_device() == torch.device("cpu")
    proxy.cuda.synchronize()  # a no-op, not an error
    assert proxy.float32 is torch.float32 and proxy.nn is torch.nn


def test_adaptor_targets_this_megatron_version():
    assert D.check_megatron_version() == D.MEGATRON_CORE_VERSION == "0.16.1"


def test_cpu_clip_scales_like_megatron():
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 3.0)
    D._clip_grad_by_total_norm_fp32_cpu([p], max_norm=1.0, total_norm=6.0)
    assert torch.allclose(p.grad, torch.full((4,), 3.0 / (6.0 + 1e-6)))
    q = torch.nn.Parameter(torch.ones(2))
    q.grad = torch.ones(2)
    D._clip_grad_by_total_norm_fp32_cpu([q], max_norm=10.0, total_norm=1.0)
    assert torch.equal(q.grad, torch.ones(2))
