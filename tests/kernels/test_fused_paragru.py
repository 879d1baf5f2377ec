"""Fused ParaGRU kernels against autograd through the float64 loop of ``cell.step``."""

import pytest
import torch

pytest.importorskip("triton")

from pararnn.cells import ParaGRUCell  # noqa: E402
from pararnn.kernels import paragru  # noqa: E402
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
    cell = ParaGRUCell(n)
    with torch.no_grad():
        cell.a.mul_(scale)  # larger recurrent weights: longer memory, harder boundaries
        cell.bias.normal_(0.0, 0.5)
    pre = torch.randn(batch, steps, 3 * n)
    h0 = torch.randn(batch, n) if with_h0 else None
    resets = (torch.rand(batch, steps) < 0.15) if with_resets else None
    return cell, pre, h0, resets


def _rel(x, ref):
    return ((x.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


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
    assert plan_is_whole("gru_fwd", plan, steps, DEVICE)
    check_forward_and_backward(plan, steps, with_h0, with_resets)


def check_forward_and_backward(plan, steps, with_h0, with_resets):
    cell, pre, h0, resets = _problem(2, steps, 5, with_h0=with_h0, with_resets=with_resets)
    grad_states = torch.randn(2, steps, 5)
    ref, g_pre, (g_a, g_b), g_h0 = reference_grads(cell, pre, h0, resets, grad_states)
    a = cell.recurrent_weights().detach().float()
    b = cell.bias.detach().float().to(DEVICE)
    kw = PLANS[plan]
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    H = paragru.newton_forward(dev(pre), a.to(DEVICE), dev(h0), dev(resets), 3, bias=b, **kw)
    assert H.dtype == torch.float32 and H.shape == (2, steps, 5)
    assert (H.cpu().double() - ref).abs().max() < 2e-6
    gp, ga, gh, gb = paragru.backward(dev(pre), a.to(DEVICE), dev(h0), dev(resets), H,
                                      dev(grad_states), bias=b, **kw)
    assert gp.dtype == torch.float32
    assert _rel(gp, g_pre) < 1e-5
    assert _rel(ga, g_a) < 1e-5
    assert _rel(gb, g_b) < 1e-5
    assert _rel(gh, g_h0) < 1e-5


def test_without_bias():
    cell, pre, h0, _ = _problem(2, 20, 5, with_h0=True, with_resets=False)
    cell.bias = None
    gs = torch.randn(2, 20, 5)
    ref, g_pre, (g_a,), _ = reference_grads(cell, pre, h0, None, gs)
    a = cell.recurrent_weights().detach().to(DEVICE)
    H = paragru.newton_forward(pre.to(DEVICE), a, h0.to(DEVICE), None, 3, seg_len=6, warmup=3)
    assert (H.cpu().double() - ref).abs().max() < 2e-6
    gp, ga, _, gb = paragru.backward(pre.to(DEVICE), a, h0.to(DEVICE), None, H, gs.to(DEVICE),
                                     seg_len=6, warmup=3)
    assert gb is None and _rel(gp, g_pre) < 1e-5 and _rel(ga, g_a) < 1e-5


def test_sequential_forward_matches():
    cell, pre, h0, resets = _problem(2, 21, 20, with_h0=True, with_resets=True)
    a = cell.recurrent_weights().detach()
    ref = sequential_states(cell.double(), pre.double(), h0.double(), resets)
    H = paragru.sequential_forward(pre.to(DEVICE), a.to(DEVICE), h0.to(DEVICE),
                                   resets.to(DEVICE), bias=cell.bias.detach().float().to(DEVICE),
                                   block_n=16)
    assert (H.cpu().double() - ref).abs().max() < 2e-6


def test_bf16_input_is_computed_in_fp32():
    cell, pre, h0, _ = _problem(2, 13, 5, with_h0=True, with_resets=False)
    pre16 = pre.to(torch.bfloat16)
    ref = sequential_states(cell.double(), pre16.double(), h0.double(), None)
    a = cell.recurrent_weights().detach()
    b = cell.bias.detach().float().to(DEVICE)
    # 3 segments (5, 5 and a masked 3), 3 rounds: exact by construction whatever the
    # (unclipped) dynamics
    H = paragru.newton_forward(pre16.to(DEVICE), a.to(DEVICE), h0.to(DEVICE), None, 3,
                               bias=b, seg_len=5, warmup=2)
    assert (H.cpu().double() - ref).abs().max() < 2e-6
    gs = torch.randn(2, 13, 5)
    _, g_pre, (g_a, g_b), _ = reference_grads(cell, pre16, h0, None, gs)
    gp, ga, _, gb = paragru.backward(pre16.to(DEVICE), a.to(DEVICE), h0.to(DEVICE), None, H,
                                     gs.to(DEVICE), bias=b, seg_len=5, warmup=2)
    # grad_pre comes back in the input's dtype (bf16 rounding, ~4e-3 relative)
    assert gp.dtype == torch.bfloat16 and _rel(gp, g_pre) < 1e-2
    assert _rel(ga, g_a) < 1e-5 and _rel(gb, g_b) < 1e-5


@pytest.mark.parametrize("plan,steps", [("single", 17), ("repair", 17), ("whole", 24)])
def test_bf16_hidden_copy_and_its_gradient(plan, steps):
    """A bf16 layer's launches: the forward walk also writes the states in bf16 (rounded
    from the fp32 states it writes), and the backward reads a bf16 gradient as it is,
    giving the float64 reference's gradients of that gradient."""
    cell, pre, h0, resets = _problem(2, steps, 5, with_h0=True, with_resets=True)
    pre16 = pre.to(torch.bfloat16).to(DEVICE)
    a = cell.recurrent_weights().detach().float().to(DEVICE)
    kw = dict(bias=cell.bias.detach().float().to(DEVICE), **PLANS[plan])
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    hidden = torch.full((2, steps, 5), float("nan"), device=DEVICE, dtype=torch.bfloat16)
    H, _ = paragru.forward(pre16, a, dev(h0), dev(resets), 3, hidden_out=hidden, **kw)
    grad = torch.randn(2, steps, 5).to(torch.bfloat16)
    ref, g_pre, (g_a, g_b), g_h0 = reference_grads(cell, pre16.cpu(), h0, resets, grad.float())
    assert (H.cpu().double() - ref).abs().max() < 2e-6
    if CUDA:  # rounded to nearest even, as torch's cast
        assert torch.equal(hidden, H.to(torch.bfloat16))
    else:  # Triton's interpreter truncates fp32 to bf16: within one bf16 ulp
        torch.testing.assert_close(hidden.float(), H, rtol=2.0 ** -7, atol=0)
    gp, ga, gh, gb = paragru.backward(pre16, a, dev(h0), dev(resets), H, dev(grad), **kw)
    assert _rel(gp, g_pre) < 1e-2  # grad_pre in bf16
    assert max(_rel(ga, g_a), _rel(gb, g_b), _rel(gh, g_h0)) < 1e-5


@pytest.mark.parametrize("loss_on", ["hidden", "final state", "both"])
def test_solve_with_hidden_against_autograd_through_the_loop(loss_on):
    """``paragru_solve(hidden=True)`` on bf16 input: gradients of a loss on the bf16 copy,
    on the fp32 final state or both (what a caller carrying the state on uses), against
    autograd through the float64 loop on the same bf16 input. For fp32 input the hidden
    output is the states tensor itself."""
    torch.manual_seed(1)
    cell, pre, h0, _ = _problem(2, 13, 6, with_h0=True, with_resets=False, scale=1.0)
    pre = pre.to(torch.bfloat16)
    # the copy's gradient is bf16: weights it holds exactly keep it exact
    w_h, w_s = torch.randn(2, 13, 6).bfloat16().float(), torch.randn(2, 6)
    loss = output_loss(loss_on, w_h, w_s)

    leaves = [pre.double().requires_grad_(), cell.a.detach().double().requires_grad_(),
              cell.bias.detach().double().requires_grad_(), h0.double().requires_grad_()]
    ref = paragru.paragru_naive(*leaves)
    want = torch.autograd.grad(loss(ref, ref), leaves)

    ours = [_dev_leaf(pre)] + [_dev_leaf(t.detach().float()) for t in leaves[1:]]
    states, h, _ = paragru.paragru_solve(*ours, hidden=True)
    assert h.dtype == torch.bfloat16 and h.shape == (2, 13, 6) and h.is_contiguous()
    got = torch.autograd.grad(loss(states, h), ours)
    assert got[0].dtype == torch.bfloat16 and _rel(got[0], want[0]) < 1e-2  # grad_pre in bf16
    for g, w in zip(got[1:], want[1:]):
        assert _rel(g, w) < 1e-5
    states32, h32, _ = paragru.paragru_solve(_dev_leaf(pre.float()), *ours[1:], hidden=True)
    assert h32 is states32


def _dev_leaf(t):
    return t.detach().to(DEVICE).requires_grad_()


def test_one_round_is_not_enough_without_warmup():
    """The boundary rounds do real work: with no warm-up and long memory, one round
    leaves later segments wrong, enough rounds fix them."""
    cell, pre, h0, _ = _problem(1, 17, 4, with_h0=True, with_resets=False, scale=1.0)
    with torch.no_grad():
        pre[..., :4] -= 4.0  # update gate z ~ 0.02: each step keeps ~98% of the state
    ref = sequential_states(cell.double(), pre.double(), h0.double(), None)
    a = cell.recurrent_weights().detach()
    args = (pre.to(DEVICE), a.to(DEVICE), h0.to(DEVICE), None)
    b = cell.bias.detach().float().to(DEVICE)
    rough = paragru.newton_forward(*args, 1, bias=b, seg_len=3, warmup=0)
    # 6 segments (the last one 2 steps): 6 rounds are exact by construction
    exact = paragru.newton_forward(*args, 6, bias=b, seg_len=3, warmup=0)
    assert (exact.cpu().double() - ref).abs().max() < 2e-6
    assert (rough.cpu().double() - ref).abs().max() > 1e-4


@pytest.mark.parametrize("plan,steps", [("repair", 21), ("whole", 40)])
def test_one_round_is_exact_on_an_affine_recurrence(plan, steps):
    """With zero recurrent weights the step is affine in the state, so one boundary-Newton
    round makes every segment exact, however far off the warm-up left the starts: with 5
    segments and 1 round, segments 2-4 come out right only if each walk records its
    assumed start ``S_c`` and its Jacobian product ``A_c`` right (one round with either
    wrong repairs segment 1 alone). ``whole`` walks in whole step blocks (the ALIGNED
    kernel), ``repair`` with per-step masks."""
    if plan == "whole":
        assert plan_is_whole("gru_fwd", plan, steps, DEVICE)
    cell, pre, h0, _ = _problem(2, steps, 5, with_h0=True, with_resets=False)
    with torch.no_grad():
        cell.a.zero_()
        pre[..., :5] -= 4.0  # update gate z ~ 0.02: each step keeps ~98% of the state
    ref = sequential_states(cell.double(), pre.double(), h0.double(), None)
    kw = PLANS[plan]
    # the warm-up alone leaves segment 2's start far off: the round has work to do
    assert warmup_start_error(cell.double(), pre, ref, plan) > 0.05
    b = cell.bias.detach().float().to(DEVICE)
    a = cell.a.detach().float().to(DEVICE)
    H = paragru.newton_forward(pre.to(DEVICE), a, h0.to(DEVICE), None, 1, bias=b, **kw)
    assert (H.cpu().double() - ref).abs().max() < 2e-6


def test_supports_and_validation():
    pre = torch.randn(2, 3, 6, device=DEVICE)
    assert paragru.supports(pre)
    assert paragru.supports(pre.to(torch.bfloat16))
    assert not paragru.supports(pre.double())
    a = torch.randn(3, 2, device=DEVICE)
    with pytest.raises(TypeError, match="float64"):
        paragru.newton_forward(pre.double(), a)
    with pytest.raises(ValueError, match="a must be"):
        paragru.newton_forward(pre, torch.randn(3, 3, device=DEVICE))
    with pytest.raises(ValueError, match="h0 must be"):
        paragru.sequential_forward(pre, a, torch.randn(2, 3, device=DEVICE))
    with pytest.raises(ValueError, match="resets must be"):
        paragru.newton_forward(pre, a, None, torch.zeros(2, 3, device=DEVICE))
    with pytest.raises(ValueError, match="hidden_out must be a contiguous"):
        paragru.forward(pre, a, hidden_out=torch.empty(2, 3, 3, device=DEVICE))


@gpu
@pytest.mark.parametrize("batch,steps,n", [(4, 3000, 768), (1, 20000, 64), (16, 257, 512)])
def test_gpu_real_sizes(batch, steps, n):
    torch.manual_seed(1)
    cell = ParaGRUCell(n, recurrent_clip=0.9).to(DEVICE)
    pre = torch.randn(batch, steps, 3 * n, device=DEVICE)
    h0 = torch.randn(batch, n, device=DEVICE)
    resets = torch.rand(batch, steps, device=DEVICE) < 0.001
    a = cell.recurrent_weights().detach()
    b = torch.randn(3, n, device=DEVICE) * 0.5
    H = paragru.newton_forward(pre, a, h0, resets, 3, bias=b)
    Hs = paragru.sequential_forward(pre, a, h0, resets, bias=b)
    assert (H - Hs).abs().max() < 1e-5
    # float64 reference on 16 channels (channels are independent)
    sub = ParaGRUCell(16).to(DEVICE).double()
    with torch.no_grad():
        sub.a.copy_(a[:, :16].double())
        sub.bias.copy_(b[:, :16].double())
    ref = sequential_states(sub, pre[..., _cols(n, 16)].double(), h0[:, :16].double(), resets)
    assert (H[..., :16].double() - ref).abs().max() < 2e-5
    grad_states = torch.randn_like(H)
    full = paragru.backward(pre, a, h0, resets, H, grad_states, bias=b)
    single = paragru.backward(pre, a, h0, resets, H, grad_states, bias=b, seg_len=steps)
    for x, y in zip(full, single):
        assert _rel(x, y.double().cpu()) < 1e-5


def _cols(n, k):
    return torch.cat([torch.arange(g * n, g * n + k) for g in range(3)])


def test_select_fused_uses_the_cell_hook():
    """solver.backends.select_fused: which cells/backends get the kernels (through
    Cell.fused_solver), and gradients chained through the recurrent-weight clipping match
    autograd through the loop."""
    from pararnn.solver.backends import select_fused

    cell = ParaGRUCell(5, recurrent_clip=0.3)
    x = torch.randn(2, 9, 15)
    assert select_fused(cell, x.to(DEVICE), "torch") is None
    assert select_fused(cell, x.double().to(DEVICE), "triton") is None
    changed = type("Changed", (ParaGRUCell,), {"step": lambda self, x, h: h})(5)
    assert select_fused(changed, x.to(DEVICE), "triton") is None  # its own step: generic path
    assert select_fused(type("Same", (ParaGRUCell,), {})(5), x.to(DEVICE), "triton") is not None
    fused = select_fused(cell.to(DEVICE), x.to(DEVICE), "triton")
    resets = torch.rand(2, 9) < 0.2
    grad_states = torch.randn(2, 9, 5)
    with torch.no_grad():
        cell.bias.normal_()
    ref, g_pre, (g_a, g_b), g_h0 = reference_grads(cell.cpu(), x, None, resets, grad_states)
    cell = cell.float().to(DEVICE)
    cell.a.grad = cell.bias.grad = None  # the reference left float64 gradients there
    pre = x.to(DEVICE).requires_grad_()
    h0 = torch.zeros(2, 5, device=DEVICE, requires_grad=True)
    states, report = fused(pre, h0, resets.to(DEVICE), rounds=3, verify_tol=None,
                           sequential=False)
    assert (states.detach().cpu().double() - ref).abs().max() < 2e-6
    torch.autograd.backward(states, grad_states.to(DEVICE))
    assert _rel(pre.grad, g_pre) < 1e-5 and _rel(h0.grad, g_h0) < 1e-5
    assert _rel(cell.bias.grad, g_b) < 1e-5 and _rel(cell.a.grad, g_a) < 1e-5


def test_ops_match_their_naive_loops():
    """paragru_solve / paralstm_solve against paragru_naive / paralstm_naive (float64)."""
    from pararnn.kernels import paralstm

    pre = torch.randn(2, 13, 12, device=DEVICE)
    a, bias = torch.randn(3, 4, device=DEVICE) * 0.5, torch.randn(3, 4, device=DEVICE) * 0.3
    peephole = torch.randn(2, 4, device=DEVICE) * 0.5
    resets = torch.rand(2, 13, device=DEVICE) < 0.2
    for width, solve, naive, weights in ((1, paragru.paragru_solve, paragru.paragru_naive, (a,)),
                                         (2, paralstm.paralstm_solve, paralstm.paralstm_naive,
                                          (a, peephole))):
        h0 = torch.randn(2, 4 * width, device=DEVICE) * 0.5
        for clip in (None, 0.3):  # 0.3: about half of the weights are clamped
            states, _ = solve(pre, *weights, bias, h0, resets, clip=clip, sequential=True)
            ref = naive(pre.double(), *(w.double() for w in weights), bias.double(),
                        h0.double(), resets, clip=clip)
            assert (states.double() - ref).abs().max() < 2e-6
    with pytest.raises(ValueError, match="clip must be a positive number"):
        paragru.paragru_solve(pre, a, bias, clip=0.0)
