"""A Newton solve that cannot converge is detected and handled by on_failure."""

import warnings

import pytest
import torch

import pararnn
from cells_zoo import LogisticMapCell


def chaotic_inputs(steps=200):
    x = torch.rand(2, steps, 1, dtype=torch.float64)
    h0 = torch.full((2, 4), 0.3, dtype=torch.float64)
    return x, h0


def test_chaotic_cell_raises():
    x, h0 = chaotic_inputs()
    rnn = pararnn.RNN(LogisticMapCell(), mode="parallel",
                      newton=pararnn.NewtonConfig(max_iters=3, tol=1e-8, on_failure="raise"))
    with pytest.raises(pararnn.NewtonConvergenceError, match="did not converge"):
        rnn(x, h0)
    assert issubclass(pararnn.NewtonConvergenceError, RuntimeError)


def test_chaotic_cell_falls_back_to_sequential():
    x, h0 = chaotic_inputs()
    cell = LogisticMapCell()
    ref, ref_n = pararnn.RNN(cell, mode="sequential")(x, h0)
    rnn = pararnn.RNN(cell, mode="parallel",
                      newton=pararnn.NewtonConfig(max_iters=3, tol=1e-8, on_failure="sequential"))
    out, h_n = rnn(x, h0)
    assert rnn.last_solve.fell_back and not rnn.last_solve.converged
    assert rnn.last_solve.iterations == 3
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(h_n, ref_n, rtol=0, atol=0)


def test_fallback_gradients_match_sequential():
    x, h0 = chaotic_inputs(steps=25)
    cell = LogisticMapCell()
    grads = []
    for mode in ("sequential", "parallel"):
        xg = x.clone().requires_grad_()
        rnn = pararnn.RNN(cell, mode=mode,
                          newton=pararnn.NewtonConfig(max_iters=2, tol=1e-10, on_failure="sequential"))
        out, _ = rnn(xg, h0)
        grads.append(torch.autograd.grad(out.sum(), [xg, cell.scale]))
    assert rnn.last_solve.fell_back
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_chaotic_cell_warns():
    x, h0 = chaotic_inputs()
    rnn = pararnn.RNN(LogisticMapCell(), mode="parallel",
                      newton=pararnn.NewtonConfig(max_iters=3, tol=1e-8, on_failure="warn"))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        rnn(x, h0)
    assert rnn.last_solve.converged is False and not rnn.last_solve.fell_back


def test_converging_solve_stops_early():
    cell = pararnn.ParaGRUCell(8, dtype=torch.float64)
    rnn = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(max_iters=50, tol=1e-10))
    rnn(torch.randn(2, 300, 24, dtype=torch.float64))
    info = rnn.last_solve
    assert info.converged and 1 <= info.iterations < 10 and float(info.residual) <= 1e-10


@pytest.mark.parametrize("on_failure", ["raise", "sequential", "warn"])
def test_nan_input_is_reported(on_failure):
    cell = pararnn.ParaGRUCell(4, dtype=torch.float64)
    x = torch.randn(1, 20, 12, dtype=torch.float64)
    x[0, 7, 3] = float("nan")
    rnn = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(tol=1e-8, on_failure=on_failure))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            rnn(x)
    h0 = torch.zeros(1, 4, dtype=torch.float64)
    h0[0, 0] = float("inf")
    with pytest.raises(ValueError, match="h0 contains NaN or Inf"):
        rnn(torch.randn(1, 20, 12, dtype=torch.float64), h0)


@pytest.mark.parametrize("name", ["dense", "block3", "paralstm"])
def test_quasi_newton_with_diagonal_jacobian(name):
    from cells_zoo import all_cells

    cell = all_cells()[name]
    x = torch.randn(2, 120, cell.input_size, dtype=torch.float64)
    ref, _ = pararnn.RNN(cell, mode="sequential")(x)
    exact = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(max_iters=100, tol=1e-11))
    quasi = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(
        max_iters=300, tol=1e-11, on_failure="raise", jacobian="diagonal"))
    exact(x)
    out, _ = quasi(x)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    assert quasi.last_solve.converged
    assert quasi.last_solve.iterations > exact.last_solve.iterations  # linear, not quadratic
    with pytest.raises(pararnn.NewtonConvergenceError):
        pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(
            max_iters=2, tol=1e-11, on_failure="raise", jacobian="diagonal"))(x)
