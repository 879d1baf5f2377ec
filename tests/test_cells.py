"""Automatic Jacobians, hand-derived Jacobians, and the cells' definitions."""

import pytest
import torch
from torch import nn

import pararnn
from cells_zoo import all_cells, reference_cells


def finite_difference_jacobian(cell, x, h):
    """Dense ∂f/∂h of one step by torch.autograd.functional (independent of torch.func)."""
    return torch.autograd.functional.jacobian(lambda hh: cell.step(x, hh), h)


@pytest.mark.parametrize("name", sorted(all_cells()))
def test_jacobian_matches_autograd(name):
    """The structured Jacobian (automatic or analytic) equals autograd's dense one."""
    cell = all_cells()[name]
    x = torch.randn(cell.input_size, dtype=torch.float64)
    h = torch.randn(cell.state_size, dtype=torch.float64) * 0.5
    value, jac = cell.step_and_jacobian(x, h)
    torch.testing.assert_close(value, cell.step(x, h))
    torch.testing.assert_close(cell.structure.to_dense(jac), finite_difference_jacobian(cell, x, h))


@pytest.mark.parametrize("name", sorted(reference_cells()))
def test_analytic_jacobian_equals_automatic(name):
    cell = reference_cells()[name]
    x = torch.randn(4, 9, cell.input_size, dtype=torch.float64)
    h = torch.randn(4, 9, cell.state_size, dtype=torch.float64)
    analytic = cell.step_and_jacobian(x, h)
    automatic = pararnn.Cell.step_and_jacobian(cell, x, h)
    torch.testing.assert_close(analytic[0], automatic[0])
    torch.testing.assert_close(analytic[1], automatic[1])


def test_analytic_override_is_used_by_the_solver():
    class Counting(pararnn.ParaGRUCell):
        calls = 0

        def step_and_jacobian(self, x, h_prev):
            Counting.calls += 1
            return super().step_and_jacobian(x, h_prev)

    cell = Counting(4, dtype=torch.float64)
    x = torch.randn(2, 11, 12, dtype=torch.float64, requires_grad=True)
    # unchecked: a check that misses its bound would fall back and probe again
    rnn = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(max_iters=3, tol=None))
    rnn(x)  # the first solve also verifies the declared structure (one more call)
    Counting.calls = 0
    out, _ = rnn(x)
    assert Counting.calls == 3
    out.sum().backward()
    assert Counting.calls == 4  # one more for the adjoint's Jacobians


def test_lstm_state_packing_roundtrip():
    h, c = torch.randn(3, 5), torch.randn(3, 5)
    state = pararnn.ParaLSTMCell.pack_state(h, c)
    assert state.shape == (3, 10)
    torch.testing.assert_close(state[:, 0::2], c)
    h2, c2 = pararnn.ParaLSTMCell.unpack_state(state)
    torch.testing.assert_close(h2, h)
    torch.testing.assert_close(c2, c)


def test_recurrent_clip_bounds_the_recurrence():
    cell = pararnn.ParaGRUCell(8, recurrent_clip=0.5)
    with torch.no_grad():
        cell.a.mul_(100)
    assert cell.recurrent_weights().abs().max() <= 0.5
    assert cell.a.abs().max() > 0.5  # the parameter itself is untouched
    with pytest.raises(ValueError, match="recurrent_clip"):
        pararnn.ParaGRUCell(8, recurrent_clip=-1.0)


def test_cell_definition_errors():
    class NoStep(pararnn.Cell):
        input_size, state_size = 2, 2

    class NoSize(pararnn.Cell):
        jacobian = "diagonal"

        def step(self, x, h):
            return h

    class BadBlocks(pararnn.Cell):
        input_size, state_size, jacobian, block_size = 2, 5, "block", 2

        def step(self, x, h):
            return h

    class BadKind(pararnn.Cell):
        input_size, state_size, jacobian = 2, 2, "triangular"

        def step(self, x, h):
            return h

    x = torch.zeros(1, 3, 2)
    with pytest.raises(NotImplementedError, match="must implement step"):
        pararnn.RNN(NoStep(), mode="sequential")(x)
    with pytest.raises(TypeError, match="input_size must be a positive int"):
        pararnn.RNN(NoSize())
    with pytest.raises(ValueError, match="not a multiple of block_size"):
        pararnn.RNN(BadBlocks())
    with pytest.raises(ValueError, match="jacobian must be one of"):
        pararnn.RNN(BadKind())
    with pytest.raises(TypeError, match="must be a pararnn.Cell"):
        pararnn.RNN(nn.GRUCell(2, 2))


def test_projection_is_block_diagonal():
    proj = pararnn.MultiHeadProjection(8, 6, 3, num_heads=2, dtype=torch.float64)
    x = torch.randn(5, 8, dtype=torch.float64)
    x_other_head = x.clone()
    x_other_head[:, 4:] += 1.0  # only head 1's inputs change
    out, out2 = proj(x).view(5, 3, 2, 3), proj(x_other_head).view(5, 3, 2, 3)
    torch.testing.assert_close(out[:, :, 0], out2[:, :, 0])  # head 0 channels unchanged
    assert not torch.allclose(out[:, :, 1], out2[:, :, 1])
    with pytest.raises(ValueError, match="num_heads=3 must divide"):
        pararnn.MultiHeadProjection(8, 6, 3, num_heads=3)


def _dense_block_diagonal(weight):
    """(H, G, Nh, Dh) head weights -> the (G*H*Nh, H*Dh) dense gate-major matrix."""
    heads, gates, nh, dh = weight.shape
    dense = weight.new_zeros(gates, heads, nh, heads, dh)
    for h in range(heads):
        dense[:, h, :, h, :] = weight[h]
    return dense.reshape(gates * heads * nh, heads * dh)


@pytest.mark.parametrize("bias", [False, True])
def test_projection_equals_dense_block_diagonal_matmul(bias):
    """The per-gate strided GEMMs give the gate-major output and gradients of x @ W_dense^T."""
    proj = pararnn.MultiHeadProjection(12, 9, 3, num_heads=3, bias=bias, dtype=torch.float64)
    if bias:
        with torch.no_grad():
            proj.bias.normal_()
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    out = proj(x)
    dense = _dense_block_diagonal(proj.weight)
    ref = x @ dense.T + (proj.bias if bias else 0.0)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, proj.weight), grad)
    rx, rw = torch.autograd.grad(ref, (x, proj.weight), grad)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    for head_major in (False, True):
        assert torch.autograd.gradcheck(
            lambda x, w: pararnn.layers.projection._HeadsMatmul.apply(x, w, head_major),
            (x[:1, :3].detach().requires_grad_(), proj.weight.detach().clone().requires_grad_()))


@pytest.mark.parametrize("splits", [2, 4, 8])
def test_split_weight_gradient_equals_one_gemm(splits):
    """The weight gradient reduced over chunks of rows is the one-GEMM product."""
    from pararnn.layers.projection import heads_weight_grad
    heads, rows, width, head_in = 3, 64, 12, 5
    grad = torch.randn(heads, rows, width, dtype=torch.float64)
    x2 = torch.randn(rows, heads * head_in, dtype=torch.float64)
    ref = torch.einsum("hrw,rhd->hwd", grad, x2.view(rows, heads, head_in))
    torch.testing.assert_close(heads_weight_grad(grad, x2, head_in, splits), ref,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(heads_weight_grad(grad, x2, head_in), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="must divide the 64 rows"):
        heads_weight_grad(grad, x2, head_in, 3)


def test_weight_gradient_splits_only_small_float_weights_on_cuda():
    from pararnn.layers.projection import (SPLIT_K_MAX, SPLIT_K_MAX_OUTPUTS, SPLIT_K_MIN_ROWS,
                                           weight_grad_splits)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    long, small = SPLIT_K_MAX * SPLIT_K_MIN_ROWS, 8 * 192 * 64
    assert weight_grad_splits(long, small, torch.float32, cuda) == SPLIT_K_MAX
    assert weight_grad_splits(4 * long, small, torch.float64, cuda) == SPLIT_K_MAX
    assert weight_grad_splits(long // 4, small, torch.float32, cuda) == SPLIT_K_MAX // 4
    assert weight_grad_splits(SPLIT_K_MIN_ROWS, small, torch.float32, cuda) == 1
    assert weight_grad_splits(long + 1, small, torch.float32, cuda) == 1  # odd: no even chunks
    assert weight_grad_splits(long, SPLIT_K_MAX_OUTPUTS, torch.float32, cuda) == SPLIT_K_MAX
    assert weight_grad_splits(long, SPLIT_K_MAX_OUTPUTS + 1, torch.float32, cuda) == 1
    assert weight_grad_splits(long, small, torch.bfloat16, cuda) == 1
    assert weight_grad_splits(long, small, torch.float32, cpu) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_split_weight_gradient_in_the_layer_on_cuda():
    """At a shape where the backward splits the reduction, gradients equal the dense ones."""
    from pararnn.layers.projection import SPLIT_K_MIN_ROWS
    proj = pararnn.MultiHeadProjection(32, 16, 3, num_heads=4, bias=False, device="cuda",
                                       dtype=torch.float64)
    x = torch.randn(4, 4 * SPLIT_K_MIN_ROWS, 32, device="cuda", dtype=torch.float64,
                    requires_grad=True)
    out = proj(x)
    ref = x @ _dense_block_diagonal(proj.weight).T
    grad = torch.randn_like(out)
    gw = torch.autograd.grad(out, proj.weight, grad)[0]
    rw = torch.autograd.grad(ref, proj.weight, grad)[0]
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-10)


def test_projection_under_autocast_returns_the_autocast_dtype():
    proj = pararnn.MultiHeadProjection(8, 4, 3, num_heads=2, bias=False)
    x = torch.randn(3, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = proj(x)
    assert out.dtype == torch.bfloat16
    ref = x @ _dense_block_diagonal(proj.weight).T
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and proj.weight.grad.dtype == torch.float32


def test_layer_keeps_the_gate_bias_in_the_cell():
    gru = pararnn.ParaGRU(4, 6, num_heads=2)
    assert gru.projection.bias is None and gru.cell.bias.shape == (3, 6)
    assert pararnn.ParaLSTM(4, 6, bias=False).cell.bias is None


class _TanhCell(pararnn.Cell):
    """``tanh(a h + x)`` (diagonal), with ``mixed`` subtracting the mean of x over its
    second-last dimension: time on a sequence, the batch step by step."""
    input_size, state_size, jacobian = 3, 3, "diagonal"

    def __init__(self, output="state"):
        super().__init__()
        self.a = nn.Parameter(torch.full((3,), 0.5, dtype=torch.float64))
        self.output = output

    def step(self, x, h):
        if self.output == "mixed":
            x = x - x.mean(dim=-2, keepdim=True)
        h_new = torch.tanh(self.a * h + x)
        if self.output == "wide":
            return torch.cat([h_new, h_new[..., :1]], dim=-1)
        return h_new.round().long() if self.output == "integer" else h_new


@pytest.mark.parametrize("mode", ["sequential", "parallel", "auto"])
@pytest.mark.parametrize("output", ["wide", "integer"])
def test_step_returning_no_state_is_named(mode, output):
    """A step that returns another width or an integer tensor: a TypeError naming what it
    returned, in every mode (the loop took integers silently, rounding the states)."""
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"_TanhCell.step must return the new state, a "
                       r"floating-point tensor of h_prev's shape .* it returned shape"):
        pararnn.RNN(_TanhCell(output), mode=mode)(x)


def test_step_mixing_time_steps_is_refused_in_parallel():
    """Newton evaluates step on the whole (B, T, ...) sequence, the loop per step: a step
    reducing over a leading dimension solves another system in parallel (1.07 off, reported
    converged) and is refused, naming the rule; the same cell runs step by step."""
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="must treat every leading dimension of x and h_prev "
                       "as a batch dimension"):
        pararnn.RNN(_TanhCell("mixed"), mode="parallel")(x)
    out, _ = pararnn.RNN(_TanhCell("mixed"), mode="sequential")(x)
    assert out.shape == (2, 6, 3)
    plain, _ = pararnn.RNN(_TanhCell(), mode="parallel")(x)  # the check passes a proper cell
    torch.testing.assert_close(plain, pararnn.RNN(_TanhCell(), mode="sequential")(x)[0],
                               rtol=1e-10, atol=1e-12)


class _MisdeclaredCell(pararnn.Cell):
    """Declares a diagonal Jacobian; ``x[..., 0]`` couples each channel to its neighbour."""
    input_size, state_size, jacobian = 6, 6, "diagonal"

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.full((6,), 0.5, dtype=torch.float64))

    def step(self, x, h):
        return torch.tanh(self.a * h + x + 0.5 * x[..., :1] * h.roll(1, -1))


@pytest.mark.parametrize("mode", ["parallel", "auto"])
def test_wrong_structure_is_found_past_zero_padded_first_steps(mode):
    """Inputs that zero the off-diagonal entries on the first steps (left padding): the probe
    read only those and passed, and the backward used the declared diagonal (the x gradient
    0.89 off); it also reads steps spread over the sequence."""
    x = torch.randn(2, 40, 6, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        x[:, :4, 0] = 0
    with pytest.raises(ValueError, match="declares jacobian='diagonal'"):
        pararnn.RNN(_MisdeclaredCell(), mode=mode)(x)[0].sum().backward()


def test_wrong_structure_past_padded_first_steps_is_found_where_a_nan_hides_the_solution(
        monkeypatch):
    """auto trains through the loop, which carries a NaN in x (row 1) into the states after
    it, so the check at the solution, reading row 1, checks nothing: the first probe, on
    row 0's first steps (zero-padded here) and steps spread over it, must find the wrong
    structure itself, or the finite rows' gradients come silently from the declared diagonal."""
    from pararnn.solver import api

    monkeypatch.setattr(api, "CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD", 0)
    x = torch.randn(2, 40, 6, dtype=torch.float64)
    x[:, :4, 0] = 0
    x[1, 10, 2] = float("nan")
    with pytest.raises(ValueError, match="declares jacobian='diagonal'"):
        pararnn.RNN(_MisdeclaredCell(), mode="auto")(x.requires_grad_())
