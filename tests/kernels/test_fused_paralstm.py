"""Fused ParaLSTM kernels against autograd through the float64 loop of ``cell.step``."""

import pytest
import torch

pytest.importorskip("triton")

from pararnn.cells import ParaLSTMCell  # noqa: E402
from pararnn.kernels import paralstm  # noqa: E402
from pararnn.kernels import interpreter_enabled  # noqa: E402

from _fused_reference import (PLANS, WHOLE_BLOCK_CASES, output_loss,  # noqa: E402
                              plan_is_whole, reference_grads, sequential_states,
                              warmup_start_error)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
if not CUDA and not interpreter_enabled():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)


def _problem(batch, steps, n, *, with_h0, with_resets, scale=2.0):
    cell = ParaLSTMCell(n)
    with torch.no_grad():
        cell.a.mul_(scale)
        cell.peephole.mul_(scale)
        cell.bias.normal_(0.0, 0.5)
    pre = torch.randn(batch, steps, 3 * n)
    h0 = torch.randn(batch, 2 * n) if with_h0 else None
    resets = (torch.rand(batch, steps) < 0.15) if with_resets else None
    return cell, pre, h0, resets


def _dev(t):
    return None if t is None else t.to(DEVICE)


def _rel(x, ref):
    return ((x.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _weights(cell):
    return [w.detach().float().to(DEVICE) for w in cell.recurrent_weights()]


def _bias(cell):
    return cell.bias.detach().float().to(DEVICE)


@pytest.mark.parametrize("plan", ["single", "repair", "warm"])
# 21 steps: 5 step blocks of 4 and a masked step; "repair" cuts 5 segments (the last one
# step long) for 3 rounds, so the boundary Newton must converge, not just run out of
# segments; "warm" cuts 3, each warm-up reaching t = 0
@pytest.mark.parametrize("steps,with_h0,with_resets", [(1, True, False), (7, False, True),
                                                       (21, True, True)])
def test_forward_and_backward(plan, steps, with_h0, with_resets):
    check_forward_and_backward(plan, steps, with_h0, with_resets)


@pytest.mark.parametrize("plan,steps,with_h0,with_resets", WHOLE_BLOCK_CASES)
def test_forward_and_backward_in_whole_blocks(plan, steps, with_h0, with_resets):
    """Steps, segments and warm-up multiples of the kernels' step block: the ALIGNED
    kernels, whose step loop has no per-step masks."""
    assert plan_is_whole("lstm_fwd", plan, steps, DEVICE)
    check_forward_and_backward(plan, steps, with_h0, with_resets)


def check_forward_and_backward(plan, steps, with_h0, with_resets):
    cell, pre, h0, resets = _problem(2, steps, 5, with_h0=with_h0, with_resets=with_resets)
    grad_states = torch.randn(2, steps, 10)
    ref, g_pre, (g_a, g_p, g_b), g_h0 = reference_grads(cell, pre, h0, resets, grad_states)
    a, p = _weights(cell)
    kw = PLANS[plan]
    H = paralstm.newton_forward(_dev(pre), a, p, _dev(h0), _dev(resets), 3, bias=_bias(cell),
                                **kw)
    assert H.dtype == torch.float32 and H.shape == (2, steps, 10)
    assert (H.cpu().double() - ref).abs().max() < 2e-6
    gp, ga, gpp, gh, gb = paralstm.backward(_dev(pre), a, p, _dev(h0), _dev(resets), H,
                                            _dev(grad_states), bias=_bias(cell), **kw)
    assert _rel(gp, g_pre) < 1e-5
    assert _rel(gb, g_b) < 1e-5
    assert _rel(ga, g_a) < 1e-5
    assert _rel(gpp, g_p) < 1e-5
    assert _rel(gh, g_h0) < 1e-5


@pytest.mark.parametrize("plan,steps,dtype", [("single", 17, torch.float32),
                                              ("single", 17, torch.bfloat16),
                                              ("repair", 17, torch.float32),
                                              ("whole", 24, torch.bfloat16)])
def test_hidden_output_and_its_gradient(plan, steps, dtype):
    """The layer's launches: the forward walk also writes h alone, in the input's dtype,
    equal to the states' h; the backward reads h's gradient alone, (B, T, N) in its dtype,
    and gives the gradients of the states' gradient with zeros for c (float64 reference)."""
    cell, pre, h0, resets = _problem(2, steps, 5, with_h0=True, with_resets=True)
    pre = _dev(pre.to(dtype))
    a, p = _weights(cell)
    kw = dict(bias=_bias(cell), **PLANS[plan])
    hidden = torch.full((2, steps, 5), float("nan"), device=DEVICE, dtype=dtype)
    H, _ = paralstm.forward(pre, a, p, _dev(h0), _dev(resets), 3, hidden_out=hidden, **kw)
    grad_h = torch.randn(2, steps, 5).to(dtype)
    grad_states = torch.stack((torch.zeros(2, steps, 5), grad_h.float()), -1).flatten(-2)
    ref, g_pre, (g_a, g_p, g_b), g_h0 = reference_grads(cell, pre.cpu(), h0, resets, grad_states)
    assert (H.cpu().double() - ref).abs().max() < 2e-6
    if CUDA or dtype == torch.float32:  # rounded to nearest even, as torch's cast
        assert torch.equal(hidden, H[..., 1::2].to(dtype))
    else:  # Triton's interpreter truncates fp32 to bf16: within one bf16 ulp
        torch.testing.assert_close(hidden.float(), H[..., 1::2], rtol=2.0 ** -7, atol=0)

    gp, ga, gpp, gh, gb = paralstm.backward(pre, a, p, _dev(h0), _dev(resets), H,
                                            _dev(grad_h), **kw)
    assert _rel(gp, g_pre) < (1e-5 if dtype == torch.float32 else 1e-2)
    assert max(_rel(ga, g_a), _rel(gpp, g_p), _rel(gb, g_b), _rel(gh, g_h0)) < 1e-5


@pytest.mark.parametrize("loss_on", ["hidden", "final state", "both"])
def test_solve_with_hidden_against_autograd_through_the_loop(loss_on):
    """``paralstm_solve(hidden=True)``: gradients of a loss on h, on the final state (what a
    caller carrying the state on uses) or both, against autograd through the float64 loop."""
    torch.manual_seed(1)
    cell, pre, h0, resets = _problem(2, 13, 6, with_h0=True, with_resets=False, scale=1.0)
    w_h, w_s = torch.randn(2, 13, 6), torch.randn(2, 12)
    loss = output_loss(loss_on, w_h, w_s)

    leaves = [pre.double().requires_grad_(), cell.a.detach().double().requires_grad_(),
              cell.peephole.detach().double().requires_grad_(),
              cell.bias.detach().double().requires_grad_(), h0.double().requires_grad_()]
    ref = paralstm.paralstm_naive(*leaves)
    want = torch.autograd.grad(loss(ref, ref[..., 1::2]), leaves)

    ours = [_dev(t.detach().float()).requires_grad_() for t in leaves]
    states, h, _ = paralstm.paralstm_solve(*ours, hidden=True)
    assert h.shape == (2, 13, 6) and h.is_contiguous()
    got = torch.autograd.grad(loss(states, h), ours)
    for g, w in zip(got, want):
        assert _rel(g, w) < 1e-5


def test_sequential_forward_matches():
    cell, pre, h0, resets = _problem(2, 21, 20, with_h0=True, with_resets=True)
    a, p = _weights(cell)
    ref = sequential_states(cell.double(), pre.double(), h0.double(), resets)
    H = paralstm.sequential_forward(pre.to(DEVICE), a, p, h0.to(DEVICE), resets.to(DEVICE),
                                    bias=_bias(cell), block_n=16)
    assert (H.cpu().double() - ref).abs().max() < 2e-6


def test_bf16_input_is_computed_in_fp32():
    cell, pre, h0, _ = _problem(2, 13, 5, with_h0=True, with_resets=False)
    pre16 = pre.to(torch.bfloat16)
    a, p = _weights(cell)
    gs = torch.randn(2, 13, 10)
    ref, g_pre, (g_a, g_p, g_b), _ = reference_grads(cell, pre16, h0, None, gs)
    # 3 segments (5, 5 and a masked 3), 3 rounds: exact by construction whatever the
    # (unclipped) dynamics
    H = paralstm.newton_forward(pre16.to(DEVICE), a, p, h0.to(DEVICE), None, 3,
                                bias=_bias(cell), seg_len=5, warmup=2)
    assert (H.cpu().double() - ref).abs().max() < 2e-6
    gp, ga, gpp, _, gb = paralstm.backward(pre16.to(DEVICE), a, p, h0.to(DEVICE), None, H,
                                           gs.to(DEVICE), bias=_bias(cell), seg_len=5, warmup=2)
    # grad_pre comes back in the input's dtype (bf16 rounding, ~4e-3 relative)
    assert gp.dtype == torch.bfloat16 and _rel(gp, g_pre) < 1e-2
    assert _rel(ga, g_a) < 1e-5 and _rel(gpp, g_p) < 1e-5 and _rel(gb, g_b) < 1e-5


@pytest.mark.parametrize("plan,steps", [("repair", 21), ("whole", 40)])
def test_one_round_is_exact_on_an_affine_recurrence(plan, steps):
    """With zero recurrent and peephole weights the cell state's step is affine, so one
    boundary-Newton round makes every segment exact, however far off the warm-up left the
    starts: with 5 segments and 1 round, segments 2-4 come out right only if each walk
    records its assumed start ``S_c`` and its Jacobian product ``A_c`` right. ``whole``
    walks in whole step blocks (the ALIGNED kernel), ``repair`` with per-step masks."""
    if plan == "whole":
        assert plan_is_whole("lstm_fwd", plan, steps, DEVICE)
    cell, pre, h0, _ = _problem(2, steps, 5, with_h0=True, with_resets=False)
    with torch.no_grad():
        cell.a.zero_()
        cell.peephole.zero_()
        pre[..., :5] += 4.0  # forget gate f ~ 0.98: each step keeps ~98% of the cell state
    ref = sequential_states(cell.double(), pre.double(), h0.double(), None)
    kw = PLANS[plan]
    # the warm-up alone leaves segment 2's start far off: the round has work to do
    assert warmup_start_error(cell.double(), pre, ref, plan) > 0.05
    a, p = _weights(cell)
    H = paralstm.newton_forward(_dev(pre), a, p, _dev(h0), None, 1, bias=_bias(cell), **kw)
    assert (H.cpu().double() - ref).abs().max() < 2e-6


def test_supports_and_validation():
    pre = torch.randn(2, 3, 6, device=DEVICE)
    assert paralstm.supports(pre) and not paralstm.supports(pre.double())
    a, p = torch.randn(3, 2, device=DEVICE), torch.randn(2, 2, device=DEVICE)
    with pytest.raises(TypeError, match="float64"):
        paralstm.newton_forward(pre.double(), a, p)
    with pytest.raises(ValueError, match="peephole must be"):
        paralstm.newton_forward(pre, a, torch.randn(2, 3, device=DEVICE))
    with pytest.raises(ValueError, match="h0 must be"):
        paralstm.sequential_forward(pre, a, p, torch.randn(2, 2, device=DEVICE))
    with pytest.raises(ValueError, match="hidden_out must be a contiguous"):
        paralstm.forward(pre, a, p, hidden_out=torch.empty(2, 3, 4, device=DEVICE))
    H, _ = paralstm.forward(pre, a, p)
    with pytest.raises(ValueError, match=r"grad_H \(2, 3, 4\) or \(2, 3, 2\)"):
        paralstm.backward(pre, a, p, None, None, H, torch.randn(2, 3, 3, device=DEVICE))


@gpu
@pytest.mark.parametrize("batch,steps,n", [(4, 3000, 768), (1, 20000, 64), (16, 257, 512)])
def test_gpu_real_sizes(batch, steps, n):
    torch.manual_seed(1)
    cell = ParaLSTMCell(n, recurrent_clip=0.9).to(DEVICE)
    pre = torch.randn(batch, steps, 3 * n, device=DEVICE)
    h0 = torch.randn(batch, 2 * n, device=DEVICE)
    resets = torch.rand(batch, steps, device=DEVICE) < 0.001
    a, p = _weights(cell)
    b = torch.randn(3, n, device=DEVICE) * 0.5
    H = paralstm.newton_forward(pre, a, p, h0, resets, 3, bias=b)
    Hs = paralstm.sequential_forward(pre, a, p, h0, resets, bias=b)
    assert (H - Hs).abs().max() < 1e-5
    sub = ParaLSTMCell(16).to(DEVICE).double()
    with torch.no_grad():
        sub.a.copy_(a[:, :16].double())
        sub.peephole.copy_(p[:, :16].double())
        sub.bias.copy_(b[:, :16].double())
    cols = torch.cat([torch.arange(g * n, g * n + 16) for g in range(3)])
    ref = sequential_states(sub, pre[..., cols].double(), h0[:, :32].double(), resets)
    assert (H[..., :32].double() - ref).abs().max() < 2e-5
    grad_states = torch.randn_like(H)
    full = paralstm.backward(pre, a, p, h0, resets, H, grad_states, bias=b)
    single = paralstm.backward(pre, a, p, h0, resets, H, grad_states, bias=b, seg_len=steps)
    for x, y in zip(full, single):
        assert _rel(x, y.double().cpu()) < 1e-5
