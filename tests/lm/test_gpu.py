"""GPU checks of the language models (skipped without CUDA)."""

import pytest
import torch

from pararnn.models import MODELS, build_model, preset
from pararnn.models.mamba2 import ssd_backend, ssd_chunked

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_mamba_ssm_kernel_matches_torch_fallback():
    """mamba-ssm's Triton SSD (when installed) and the PyTorch fallback agree, forward and
    backward, with an initial state and a length that is not a multiple of the chunk."""
    if ssd_backend(torch.device("cuda")) != "mamba_ssm":
        pytest.skip("mamba-ssm's Triton kernels are not installed")
    from pararnn.models import mamba2
    g = torch.Generator(device="cuda").manual_seed(0)
    b, l, h, p, n, chunk = 2, 200, 4, 32, 16, 64
    x = torch.randn(b, l, h, p, device="cuda", generator=g, requires_grad=True)
    dt = torch.rand(b, l, h, device="cuda", generator=g) * 0.2
    A = -torch.rand(h, device="cuda", generator=g) * 2 - 0.5
    B = torch.randn(b, l, 1, n, device="cuda", generator=g, requires_grad=True)
    C = torch.randn(b, l, 1, n, device="cuda", generator=g)
    s0 = torch.randn(b, h, p, n, device="cuda", generator=g)
    y1, f1 = mamba2._MAMBA_SSD(x, dt, A, B, C, chunk, initial_states=s0, return_final_states=True)
    y2, f2 = ssd_chunked(x, dt, A, B.expand(b, l, h, n), C.expand(b, l, h, n), chunk, s0)
    g1 = torch.autograd.grad(y1.square().sum(), (x, B))
    g2 = torch.autograd.grad(y2.square().sum(), (x, B))

    def relative_error(a, c):  # the kernel's float32 matmuls run in TF32 (~1e-3 relative)
        return ((a.float() - c.float()).norm() / c.float().norm()).item()

    for a, c in [(y1, y2), (f1, f2), *zip(g1, g2)]:
        assert relative_error(a, c) < 1e-2


@pytest.mark.parametrize("model", MODELS)
def test_bf16_training_step_and_cached_decoding(model):
    torch.manual_seed(0)
    lm = build_model(preset(model, "tiny")).cuda()
    idx = torch.randint(0, 256, (4, 130), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = lm(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in lm.parameters())
    lm.eval()
    with torch.no_grad():  # float32: cached decoding reproduces the parallel forward
        full = lm(idx[:, :40])
        caches = lm.new_caches()
        steps = [lm(idx[:, :20], caches=caches)] + [lm(idx[:, t:t + 1], caches=caches) for t in range(20, 40)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=2e-3, rtol=2e-3)
