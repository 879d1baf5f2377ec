"""The parallel backward (adjoint scan + one batched VJP) against autograd through the loop."""

import pytest
import torch

import pararnn
from cells_zoo import CONVERGED, all_cells
from gradient_checks import assert_gradients_close, loss_gradients


def gradients(cell, x, h0, mode, **kwargs):
    rnn = pararnn.RNN(cell, mode=mode, newton=pararnn.NewtonConfig(**CONVERGED))
    return loss_gradients(rnn, x, h0, **kwargs)[1]


def assert_same_gradients(cell, x, h0, **kwargs):
    want = gradients(cell, x, h0, "sequential", **kwargs)  # autograd through the loop
    got = gradients(cell, x, h0, "parallel", **kwargs)
    assert_gradients_close(cell, got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("steps", [1, 2, 7, 257])
@pytest.mark.parametrize("name", sorted(all_cells()))
def test_gradients_match_sequential_autograd(name, steps):
    cell = all_cells()[name]
    x = torch.randn(3, steps, cell.input_size, dtype=torch.float64)
    h0 = torch.randn(3, cell.state_size, dtype=torch.float64) * 0.5
    assert_same_gradients(cell, x, h0)


@pytest.mark.parametrize("name", ["paragru", "paralstm", "dense", "block3"])
def test_gradients_with_resets_and_packed_sequences(name):
    cell = all_cells()[name]
    x = torch.randn(2, 31, cell.input_size, dtype=torch.float64)
    h0 = torch.randn(2, cell.state_size, dtype=torch.float64) * 0.5
    resets = torch.rand(2, 31) < 0.15
    assert_same_gradients(cell, x, h0, resets=resets)
    cu = torch.tensor([0, 4, 20, 31])
    h0s = torch.randn(3, cell.state_size, dtype=torch.float64) * 0.5
    assert_same_gradients(cell, x[:1], h0s, cu_seqlens=cu)


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_layer_gradients_match(layer_cls):
    layer = layer_cls(6, 8, num_heads=2, dtype=torch.float64, newton=pararnn.NewtonConfig(**CONVERGED))
    x = torch.randn(2, 100, 6, dtype=torch.float64)
    grads = {}
    for mode in ("sequential", "parallel"):
        layer.mode = mode
        layer.zero_grad()
        out, _ = layer(x)
        (out.cos().sum()).backward()
        grads[mode] = {n: p.grad.clone() for n, p in layer.named_parameters()}
    for name in grads["sequential"]:
        torch.testing.assert_close(grads["parallel"][name], grads["sequential"][name],
                                   rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("name", sorted(all_cells()))
def test_gradcheck(name):
    cell = all_cells()[name]
    x = torch.randn(2, 5, cell.input_size, dtype=torch.float64, requires_grad=True)
    h0 = (torch.randn(2, cell.state_size, dtype=torch.float64) * 0.5).requires_grad_()
    rnn = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(**CONVERGED))

    assert torch.autograd.gradcheck(lambda x, h0: rnn(x, h0)[0], (x, h0))


def test_parameter_gradients_gradcheck():
    """gradcheck through the parameters too, via torch.func.functional_call."""
    cell = pararnn.ParaGRUCell(3, dtype=torch.float64)
    rnn = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(**CONVERGED))
    x = torch.randn(2, 6, 9, dtype=torch.float64)
    a = cell.a.detach().clone().requires_grad_()

    def fn(a):
        return torch.func.functional_call(rnn, {"cell.a": a}, (x,))[0]

    assert torch.autograd.gradcheck(fn, (a,))


def test_double_backward_raises():
    cell = pararnn.ParaGRUCell(4, dtype=torch.float64)
    x = torch.randn(1, 5, 12, dtype=torch.float64, requires_grad=True)
    out, _ = pararnn.RNN(cell, mode="parallel")(x)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_sequential_multi_head_layers_have_double_backward(layer_cls):
    """mode="sequential" keeps double backward, also through a multi-head projection (its
    backward wrote the input gradient through bmm's out=, which autograd cannot record)."""
    torch.manual_seed(0)
    layer = layer_cls(4, 8, num_heads=2, mode="sequential", dtype=torch.float64)
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w: torch.func.functional_call(
        layer, {"projection.weight": w}, (x,))[0].sin(), (x, layer.projection.weight.detach().clone()
                                                              .requires_grad_()))


def test_no_grad_inputs_are_not_differentiated():
    cell = pararnn.ParaGRUCell(4, dtype=torch.float64)
    cell.requires_grad_(False)
    x = torch.randn(1, 5, 12, dtype=torch.float64, requires_grad=True)
    out, _ = pararnn.RNN(cell, mode="parallel")(x)
    out.sum().backward()
    assert x.grad is not None and cell.a.grad is None


class HalvedGRUCell(pararnn.ParaGRUCell):
    """A subclass with its own step: the backward must not reuse ParaGRU's one-call path."""

    def step(self, x, h_prev):
        return 0.5 * super().step(x, h_prev)

    def step_and_jacobian(self, x, h_prev):
        value, jac = super().step_and_jacobian(x, h_prev)
        return 0.5 * value, 0.5 * jac


def test_backward_evaluates_builtin_cells_once_and_subclasses_generically():
    assert pararnn.ParaGRUCell(4).jacobian_value_is_step()
    assert pararnn.ParaLSTMCell(4).jacobian_value_is_step()
    cell = HalvedGRUCell(5, dtype=torch.float64)
    assert not cell.jacobian_value_is_step()
    x = torch.randn(2, 40, cell.input_size, dtype=torch.float64)
    h0 = torch.randn(2, cell.state_size, dtype=torch.float64) * 0.5
    assert_same_gradients(cell, x, h0)
