"""The fused path's on-device safety net: a segmented solve whose boundary Newton did not
converge is replaced by the exact walk, chosen on the device (no host synchronisation).

Runs through Triton's interpreter on CPU (tests/kernels/conftest.py) at small sizes; the
launch plan is forced to short segments without warm-up so that one boundary round
cannot converge for large recurrent weights.
"""

import pytest
import torch

import pararnn

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from pararnn.kernels import _fused_common  # noqa: E402
from pararnn.kernels._fused_common import boundaries_mismatch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def short_segments(monkeypatch):
    """Plans of 8-step segments without warm-up (the tuned plan walks these sizes whole)."""
    monkeypatch.setattr(_fused_common, "MIN_SEG_LEN", 8)
    monkeypatch.setattr(_fused_common, "WARMUP", 0)
    monkeypatch.setattr(_fused_common, "CHAINS_PER_SM", 1 << 20)


@triton.jit
def _mismatch_probe(E, S, OUT, P, N, tol, WIDTH: tl.constexpr, BN: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BN)
    bad = boundaries_mismatch(E, S, b, P, N, offs, offs < N, tol, WIDTH, BN)
    tl.store(OUT + b, bad.to(tl.int32))


def big_weight_layer(layer_cls, scale=4.0):
    torch.manual_seed(0)
    layer = layer_cls(4, 8, num_heads=2, mode="parallel", backend="triton", device=DEVICE,
                      newton=pararnn.NewtonConfig(boundary_rounds=1))
    with torch.no_grad():
        layer.cell.a.copy_(torch.randn(3, 8) * scale)
        layer.projection.weight.mul_(4)
    return layer


def run(layer, x, mode, newton):
    layer.mode, layer.newton = mode, newton
    with torch.no_grad():
        out, _ = layer(x)
    return out, layer.last_solve


def test_unconverged_fused_gru_reruns_exactly(short_segments):
    layer = big_weight_layer(pararnn.ParaGRU)
    x = torch.randn(2, 32, 4, device=DEVICE)
    ref, _ = run(layer, x, "sequential", None)
    unchecked, info = run(layer, x, "parallel", pararnn.NewtonConfig(boundary_rounds=1, tol=None))
    assert info.segments == 4 and info.boundary_rounds == 1 and info.exact_walk is False
    assert info.converged is None and not info.fell_back
    assert (unchecked - ref).abs().max() > 0.1  # one boundary round is not enough here
    out, info = run(layer, x, "parallel", pararnn.NewtonConfig(boundary_rounds=1))
    assert info.fell_back and info.converged is False and info.iterations == 0
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_max_iters_does_not_bound_the_fused_boundary_rounds(short_segments):
    """max_iters counts the generic path's Newton iterations; boundary_rounds the fused
    plan's rounds across segments: one option, one meaning."""
    layer = big_weight_layer(pararnn.ParaLSTM, scale=0.3)
    x = torch.randn(2, 32, 4, device=DEVICE)
    _, info = run(layer, x, "parallel", pararnn.NewtonConfig(max_iters=1, boundary_rounds=2))
    assert info.segments == 4 and info.boundary_rounds == 2 and info.iterations == 0
    with pytest.raises(ValueError, match="boundary_rounds"):
        pararnn.NewtonConfig(boundary_rounds=0)


# the case where two rounds miss the float32 level by the most of seeds 0-4 (one row of
# 384 steps: 12 segments)
@pytest.mark.parametrize("seed, steps", [(4, 384)])
def test_default_rounds_converge_for_long_memories(monkeypatch, seed, steps):
    """The default's boundary rounds: update gates biased to memories of 1 to 3,000 steps
    (b_z = -log(m - 1)), 12 segments of 32 steps, each started by the plan's usual
    warm-up walk, converge (no exact rerun) to the sequential states at the float32 level.
    This is why the default runs three rounds: two left up to 1.1e-4 here (seed 4; 5.5e-5
    for seed 3, at most 2.8e-6 for seeds 0-2), which the check's float32 bound lets pass;
    three leave at most 1.6e-6 (6.6e-7 here)."""
    monkeypatch.setattr(_fused_common, "MIN_SEG_LEN", 32)
    monkeypatch.setattr(_fused_common, "CHAINS_PER_SM", 1 << 20)
    torch.manual_seed(seed)
    layer = pararnn.ParaGRU(4, 16, num_heads=2, mode="parallel", backend="triton", device=DEVICE)
    with torch.no_grad():
        memory = torch.logspace(0.3, 3.5, 16)
        layer.cell.bias[0].copy_(-torch.log(memory - 1))
    x = torch.randn(1, steps, 4, device=DEVICE)
    layer.backend = "torch"  # the reference: PyTorch's step loop (the interpreted walk is slow)
    ref, _ = run(layer, x, "sequential", None)
    layer.backend = "triton"
    out, info = run(layer, x, "parallel", pararnn.NewtonConfig())
    assert info.backend == "triton-fused"
    assert info.segments == steps // 32 and info.boundary_rounds == 3
    assert info.converged and not info.fell_back
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_converged_fused_lstm_skips_the_rerun(short_segments):
    layer = big_weight_layer(pararnn.ParaLSTM, scale=0.3)
    x = torch.randn(2, 32, 4, device=DEVICE)
    ref, _ = run(layer, x, "sequential", None)
    out, info = run(layer, x, "parallel", pararnn.NewtonConfig(boundary_rounds=3))
    assert info.segments == 4 and info.boundary_rounds == 3
    assert info.converged and not info.fell_back
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_unconverged_fused_lstm_gradients_match_the_loop(short_segments):
    """Forward falls back on the device; the fused backward (the linear adjoint
    recurrence) then gives the gradients of the exact solution."""
    layer = big_weight_layer(pararnn.ParaLSTM)
    x = torch.randn(2, 24, 4, device=DEVICE)
    grads = []
    for backend, mode in (("torch", "sequential"), ("triton", "parallel")):
        layer.zero_grad()
        layer.backend, layer.mode = backend, mode
        xg = x.clone().requires_grad_()
        out, (h_n, c_n) = layer(xg)
        (out.sin().sum() + c_n.square().sum()).backward()
        grads.append([out.detach(), xg.grad, *(p.grad for p in layer.parameters())])
    assert layer.last_solve.fell_back
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_boundary_mismatch_check_finds_every_segment():
    """``boundaries_mismatch`` (the verification walk's decision) on crafted boundaries:
    consistent ones pass, a mismatch or NaN at any segment (also past the first group of
    8) or in any state component is found, a difference within tol is not."""
    def mismatched(E, S):
        batch, segments, n, width = E.shape
        out = torch.empty(batch, dtype=torch.int32, device=DEVICE)
        _mismatch_probe[(batch,)](E, S, out, segments, n, 1e-4, WIDTH=width, BN=8)
        return out.tolist()

    for width in (1, 2):
        E = torch.randn(2, 13, 5, width, device=DEVICE)
        S = torch.roll(E, 1, dims=1)  # S_c = E_{c-1}; S_0 is never compared
        assert mismatched(E, S) == [0, 0]
        for segment, component, value in ((11, width - 1, 1e-2), (3, 0, float("nan")),
                                          (12, 0, float("inf"))):
            bad = S.clone()
            bad[1, segment, 4, component] += value
            assert mismatched(E, bad) == [0, 1]
        close = S.clone()
        close[0, 9, 0, 0] += 1e-5
        assert mismatched(E, close) == [0, 0]
