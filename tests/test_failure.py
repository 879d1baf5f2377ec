"""A Newton solve that cannot converge is detected and handled by on_failure."""

import warnings

import pytest
import torch

import pararnn
from pararnn.solver import api
from cells_zoo import LogisticMapCell, diverging_paragru_cell, diverging_paragru_inputs


def chaotic_inputs(steps=200):
    x = torch.rand(2, steps, 1, dtype=torch.float64)
    h0 = torch.full((2, 4), 0.3, dtype=torch.float64)
    return x, h0


def test_chaotic_cell_raises():
    x, h0 = chaotic_inputs()
    rnn = pararnn.RNN(LogisticMapCell(), mode="parallel",
                      newton=pararnn.NewtonConfig(max_iters=3, tol=1e-8, on_failure="raise"))
    with pytest.raises(pararnn.NewtonConvergenceError, match="Newton diverged") as caught:
        rnn(x, h0)
    assert "max_iters" not in str(caught.value)  # more iterations do not help a chaotic cell
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
    for grad in (False, True):  # with gradients the solve runs inside an autograd Function
        with pytest.warns(RuntimeWarning, match="Newton diverged") as record:
            rnn(x.clone().requires_grad_(grad), h0)
        assert rnn.last_solve.converged is False and not rnn.last_solve.fell_back
        ours = [w.filename for w in record if "Newton diverged" in str(w.message)]
        assert ours == [__file__]  # the warning names the caller's line


def test_converging_solve_stops_early():
    cell = pararnn.ParaGRUCell(8, dtype=torch.float64)
    rnn = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(max_iters=50, tol=1e-10))
    x = torch.randn(2, 300, 24, dtype=torch.float64)
    out, _ = rnn(x)
    info = rnn.last_solve
    # stopped on the last update's size (the error of the states before it), not max_iters
    assert info.converged and 1 <= info.iterations < 10 and float(info.error) <= 1e-10
    ref, _ = pararnn.RNN(cell, mode="sequential")(x)
    assert (out - ref).abs().max().item() <= 1e-10


@pytest.mark.parametrize("on_failure", ["raise", "sequential", "warn"])
def test_nan_input_is_reported(on_failure):
    cell = pararnn.ParaGRUCell(4, dtype=torch.float64)
    x = torch.randn(1, 20, 12, dtype=torch.float64)
    x[0, 7, 3] = float("nan")
    rnn = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(tol=1e-8, on_failure=on_failure))
    with warnings.catch_warnings():
        # the solver's warning ("warn") must not come first; the first forward-mode AD of
        # a process (the structure probe) may raise torch's own DeprecationWarning
        warnings.simplefilter("error", RuntimeWarning)
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


@pytest.mark.parametrize("name", ["dense", "block3", "paralstm"])
def test_quasi_newton_with_resets_and_packed_sequences(name):
    """Quasi-Newton's diagonal Jacobians are masked at restarts like exact ones (in their own,
    diagonal, storage), with resets and with packed sequences from their own h0."""
    from cells_zoo import all_cells

    cell = all_cells()[name]
    newton = pararnn.NewtonConfig(max_iters=300, tol=1e-11, on_failure="raise", jacobian="diagonal")
    x = torch.randn(2, 40, cell.input_size, dtype=torch.float64)
    h0 = torch.randn(2, cell.state_size, dtype=torch.float64) * 0.5
    resets = torch.zeros(2, 40, dtype=torch.bool)
    resets[0, [5, 17]] = True
    resets[1, 30] = True
    cu, h0s = torch.tensor([0, 9, 25, 40]), torch.randn(3, cell.state_size, dtype=torch.float64)
    for args, kwargs in (((x, h0), dict(resets=resets)), ((x[:1], h0s), dict(cu_seqlens=cu))):
        ref, ref_n = pararnn.RNN(cell, mode="sequential")(*args, **kwargs)
        quasi = pararnn.RNN(cell, mode="parallel", newton=newton)
        out, out_n = quasi(*args, **kwargs)
        assert quasi.last_solve.converged
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out_n, ref_n, rtol=1e-9, atol=1e-9)


# ---- the default configuration never returns a silently wrong answer -----------------

def big_weight_paragru(mode):
    """ParaGRU with recurrent vectors ~N(0, 4) and a 4x input projection: Newton's 3
    iterations miss the solution by O(1) (5.9 for some seeds, 1e5 with an 8x projection)."""
    gru = pararnn.ParaGRU(8, 16, num_heads=2, mode=mode)
    with torch.no_grad():
        gru.cell.a.copy_(torch.randn(3, 16) * 2)
        gru.projection.weight.mul_(4)
    return gru


@pytest.mark.parametrize("mode", ["parallel", "auto"])
def test_big_weight_paragru_default_matches_sequential(mode):
    gru = big_weight_paragru(mode)
    x = torch.randn(4, 400, 8)
    with torch.no_grad():
        gru.mode = "sequential"
        ref, ref_n = gru(x)
        gru.mode, gru.newton = mode, pararnn.NewtonConfig(tol=None)
        unchecked, _ = gru(x)
        gru.newton = None
        out, h_n = gru(x)
    assert (unchecked - ref).abs().max() > 1.0  # what the default used to return
    info = gru.last_solve
    assert info.mode == "parallel" and info.fell_back and info.converged is False
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(h_n, ref_n, rtol=0, atol=0)


def test_big_weight_paragru_gradients_after_fallback():
    """The backward after a fallback equals autograd through the sequential loop."""
    gru = big_weight_paragru("parallel")
    x = torch.randn(2, 150, 8)
    grads = []
    for mode in ("sequential", "parallel"):
        gru.zero_grad()
        gru.mode = mode
        xg = x.clone().requires_grad_()
        out, h_n = gru(xg)
        (out.sin().sum() + h_n.square().sum()).backward()
        grads.append([xg.grad, *(p.grad for p in gru.parameters())])
    assert gru.last_solve.fell_back
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_diverging_newton_on_unclipped_paragru_falls_back():
    cell = diverging_paragru_cell()
    x = diverging_paragru_inputs()
    ref, _ = pararnn.RNN(cell, mode="sequential")(x)
    unchecked, _ = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(tol=None))(x)
    assert (unchecked - ref).abs().max() > 1e6
    rnn = pararnn.RNN(cell, mode="parallel")
    out, _ = rnn(x)
    assert rnn.last_solve.fell_back
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("gain, unchecked_failure", [(3.0, "nan"), (1.5, "far")])
def test_expanding_cell_falls_back_instead_of_nan(gain, unchecked_failure):
    from cells_zoo import ExpandingTanhCell

    cell = ExpandingTanhCell(gain=gain)
    x = torch.randn(2, 100, 4) * 0.01
    ref, _ = pararnn.RNN(cell, mode="sequential")(x)
    unchecked, _ = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(tol=None))(x)
    if unchecked_failure == "nan":
        assert unchecked.isnan().any()
    else:
        assert (unchecked - ref).abs().max() > 1e3
    rnn = pararnn.RNN(cell, mode="parallel")
    out, _ = rnn(x)
    assert rnn.last_solve.fell_back and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_overflowing_recurrence_raises_a_clear_error():
    class Doubling(pararnn.Cell):
        jacobian = "diagonal"

        def __init__(self):
            super().__init__()
            self.input_size = self.state_size = 2
            self.gain = torch.nn.Parameter(torch.full((2,), 3.0))

        def step(self, x, h_prev):
            return self.gain * h_prev + x

    rnn = pararnn.RNN(Doubling(), mode="parallel")
    with pytest.raises(ValueError, match="sequential recurrence of Doubling overflows") as caught:
        rnn(torch.rand(1, 200, 2) + 1)  # 3^200 overflows float32
    assert "max_iters" not in str(caught.value)


def test_misdeclared_jacobian_structure_is_reported():
    from cells_zoo import MisdeclaredCell

    cell = MisdeclaredCell()
    with pytest.raises(ValueError, match=r"MisdeclaredCell declares jacobian='diagonal'"):
        pararnn.RNN(cell, mode="parallel")(torch.randn(2, 50, 8) * 3)
    cell.jacobian = "dense"  # declared right: it solves, and matches the loop
    x = torch.randn(2, 50, 8)
    out, _ = pararnn.RNN(cell, mode="parallel")(x)
    ref, _ = pararnn.RNN(cell, mode="sequential")(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_misdeclared_structure_where_the_first_probe_does_not_read_is_reported_on_fallback():
    """A structure wrong only in rows past the first: the first probe (row 0) passes, Newton
    with the wrong Jacobians misses its bound and the loop recomputes the forward, but the
    backward would use that structure; the fallback probes the solution's rows and raises."""
    from cells_zoo import RowCoupledCell

    torch.manual_seed(0)
    cell = RowCoupledCell()
    x = torch.randn(3, 40, 9)
    x[0, :, -1] = 0  # row 0: diagonal
    rnn = pararnn.RNN(cell, mode="parallel")
    rnn(x[:1])  # the first probe, on row 0, passes
    with pytest.raises(ValueError, match=r"RowCoupledCell declares jacobian='diagonal'"):
        rnn(x.requires_grad_())
    cell.jacobian = "dense"
    out, _ = rnn(x)
    ref, _ = pararnn.RNN(cell, mode="sequential")(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _row_coupled_problem():
    """RowCoupledCell (float64) on 3 rows: row 0 diagonal, rows 1-2 coupled weakly enough
    that Newton with the declared (diagonal) Jacobians still converges in 30 iterations."""
    from cells_zoo import RowCoupledCell

    cell = RowCoupledCell(dtype=torch.float64)
    x = torch.randn(3, 40, 9, dtype=torch.float64)
    x[0, :, -1] = 0
    x[1:, :, -1] = 0.1
    return cell, x.requires_grad_()


def test_misdeclared_structure_is_reported_although_newton_converges(monkeypatch):
    """A structure wrong only in rows past the first (which the first probe reads) where
    Newton still converges: the forward is the loop's, the gradients are not. The first
    solve of a cell checks the structure at its solution's rows and steps, and raises."""
    cell, x = _row_coupled_problem()
    rnn = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(max_iters=30))
    ref, _ = pararnn.RNN(cell, mode="sequential")(x)
    grad_ref = torch.autograd.grad(ref.square().sum(), x)[0]
    with monkeypatch.context() as patch:  # the gap that check closes
        patch.setattr(api, "verify_structure_at_states", lambda *args: None)
        out, _ = rnn(x)
        assert rnn.last_solve.converged and not rnn.last_solve.fell_back
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        grad = torch.autograd.grad(out.square().sum(), x)[0]
        assert (grad - grad_ref).abs().max() > 0.1
    with pytest.raises(ValueError, match=r"RowCoupledCell declares jacobian='diagonal'"):
        rnn(x)


def test_misdeclared_structure_is_reported_at_the_loops_solution(monkeypatch):
    """The loop trained by "auto" needs no Jacobian in its forward, and its adjoint backward
    reads the declared one: the structure is checked at the loop's states as well."""
    monkeypatch.setattr(api, "CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD", 0)
    cell, x = _row_coupled_problem()
    with pytest.raises(ValueError, match=r"RowCoupledCell declares jacobian='diagonal'"):
        pararnn.RNN(cell, mode="auto")(x)
    cell.jacobian = "dense"
    out, _ = pararnn.RNN(cell, mode="auto")(x)
    assert type(out.grad_fn).__name__ == "LoopSolveBackward"


def test_misdeclared_structure_is_reported_when_auto_trains_through_the_loop(monkeypatch):
    """The loop's adjoint backward reads the declared Jacobian too: auto's loop verifies it
    (once per cell) as Newton does, instead of returning wrong gradients."""
    from cells_zoo import MisdeclaredCell

    monkeypatch.setattr(api, "CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD", 0)
    rnn = pararnn.RNN(MisdeclaredCell(), mode="auto")
    x = torch.randn(2, 20, 8, requires_grad=True)
    with pytest.raises(ValueError, match=r"MisdeclaredCell declares jacobian='diagonal'"):
        rnn(x)
    rnn.cell.jacobian = "dense"
    out, _ = rnn(x)
    assert type(out.grad_fn).__name__ == "LoopSolveBackward"
    got = torch.autograd.grad(out.square().sum(), x)[0]
    rnn.mode = "sequential"  # autograd through the loop
    want = torch.autograd.grad(rnn(x)[0].square().sum(), x)[0]
    torch.testing.assert_close(got, want)


def test_gru_subclass_with_its_own_step_is_verified_before_training_through_the_loop(monkeypatch):
    """A ParaGRUCell subclass that changes step but keeps the parent's analytic
    step_and_jacobian: the loop's backward would use the parent's Jacobian; it is refused."""

    class LeakyGRU(pararnn.ParaGRUCell):
        def step(self, x, h_prev):
            return 0.5 * super().step(x, h_prev) + 0.5 * torch.tanh(h_prev)

    monkeypatch.setattr(api, "CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD", 0)
    rnn = pararnn.RNN(LeakyGRU(6), mode="auto")
    with pytest.raises(ValueError, match="LeakyGRU declares jacobian='diagonal'.*step_and_jacobian"):
        rnn(torch.randn(2, 20, 18, requires_grad=True))


@pytest.mark.parametrize("where", ["x", "h0"])
def test_nan_input_is_named_on_the_first_parallel_solve(where):
    """A fresh cell's structure check meets the NaN first: it names the input, not the cell."""
    cell = pararnn.ParaGRUCell(4, dtype=torch.float64)
    x, h0 = torch.randn(1, 20, 12, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.float64)
    (x[0, 0, 3] if where == "x" else h0[0, 1]).fill_(float("nan"))
    with pytest.raises(ValueError, match=f"^{where} contains NaN or Inf"):
        pararnn.RNN(cell, mode="parallel")(x, h0)


@pytest.mark.parametrize("where", ["first probe", "solution probe"])
def test_nan_in_the_loops_input_reaches_its_outputs_without_an_error(monkeypatch, where):
    """auto's training loop carries a NaN in x into the states after it, as torch.nn.GRU
    does, wherever it sits: the structure probes (before the first solve: row 0's first
    steps; at its solution: steps spread over rows 0-2) skip points that are not finite
    rather than raise, and probe again at the next call."""
    from cells_zoo import DiagonalCell

    monkeypatch.setattr(api, "CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD", 0)
    cell = DiagonalCell()
    x = torch.randn(3, 40, 3, dtype=torch.float64)
    row, step = (0, 0) if where == "first probe" else (1, 5)  # (1, 5): x the probe skips
    x[row, step, 0] = float("nan")
    out, _ = pararnn.RNN(cell, mode="auto")(x.requires_grad_())
    assert type(out.grad_fn).__name__ == "LoopSolveBackward"
    others = [r for r in range(3) if r != row]
    assert out[row, step:].isnan().all() and out[others].isfinite().all()
    assert "_verified_at_states" not in cell.__dict__
    pararnn.RNN(cell, mode="auto")(x.detach()[others].requires_grad_())
    assert cell.__dict__["_verified_at_states"] == cell.structure


def test_structure_is_verified_once_per_cell():
    from cells_zoo import DiagonalCell

    class Counting(DiagonalCell):
        jvps = 0

        def step_and_jacobian(self, x, h_prev):
            Counting.jvps += 1
            return super().step_and_jacobian(x, h_prev)

    cell = Counting()
    # unchecked: a check that misses its bound would fall back and probe again
    rnn = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(max_iters=2, tol=None))
    x = torch.randn(1, 30, 3, dtype=torch.float64)
    rnn(x)
    rnn(x)
    # the probes before and at the first solution, then two iterations per solve
    assert Counting.jvps == 2 + 2 * 2


def long_memory_paragru(seed):
    """A float64 ParaGRU whose update gates sit near 0 (bias -8: each state keeps ~99.9% of
    the last) with strong recurrent weights and inputs: three Newton iterations leave
    per-step residuals that the Jacobians, near 1, add up along the sequence."""
    torch.manual_seed(seed)
    cell = pararnn.ParaGRUCell(16, dtype=torch.float64)
    with torch.no_grad():
        cell.bias[0].fill_(-8.0)
        cell.a.mul_(4.0)
    return cell, torch.randn(2, 2048, 48, dtype=torch.float64) * 1.5


def scaled(delta, states):
    return (delta.abs() / (1 + states.abs())).max().item()


@pytest.mark.parametrize("seed", range(4))
def test_check_update_estimates_the_error_of_long_memory_states(seed):
    """The check's update (residuals carried through the Jacobians) is the states' error to
    first order, where their per-step residuals are many times smaller."""
    from pararnn.scan import solve_linear_recurrence
    from pararnn.solver.config import SolveInfo
    from pararnn.solver.inputs import Sequences
    from pararnn.solver.newton import error_update

    cell, x = long_memory_paragru(seed)
    ref, _ = pararnn.RNN(cell, mode="sequential")(x)
    with torch.no_grad():
        states, _ = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(tol=None))(x)
        h0 = torch.zeros(2, 16, dtype=torch.float64)
        sequences = Sequences(batch=x.shape[0], steps=x.shape[1], device=x.device)
        value, jac = cell.step_and_jacobian(x, sequences.previous_states(states, h0))
        info = SolveInfo("parallel", "torch")
        update = error_update(value, states, jac, cell.structure, solve_linear_recurrence, info)
    error = scaled(ref - states, states)
    assert error > 1e-12  # far from converged: what is estimated is not rounding
    assert 0.5 * error <= float(info.error) <= 2 * error
    assert float(info.error) >= 2 * float(info.residual)
    assert scaled(ref - (states + update), states) <= 0.1 * error  # the update closes most of it


def test_default_check_catches_errors_that_add_up_over_long_memories():
    """Float64 bound 1e-8 on the scaled error. Per-step residuals below it used to pass while
    the states were several times further off; the default now returns states within the
    bound (here by the exact loop after the check fails)."""
    missed_by_the_residual = 0
    for seed in range(4):
        cell, x = long_memory_paragru(seed)
        ref, _ = pararnn.RNN(cell, mode="sequential")(x)
        with torch.no_grad():
            rnn = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(tol=None))
            unchecked, _ = rnn(x)
            rnn.newton = None
            out, _ = rnn(x)
        prev = torch.cat((torch.zeros_like(unchecked[:, :1]), unchecked[:, :-1]), dim=1)
        with torch.no_grad():
            residual = scaled(cell.step(x, prev) - unchecked, unchecked)
        missed_by_the_residual += residual <= 1e-8 < scaled(ref - unchecked, unchecked)
        error = scaled(ref - out, out)
        assert error <= 1e-8, (seed, error, rnn.last_solve)
    assert missed_by_the_residual  # the case the old residual-only check let through


def test_default_float64_check_applies_its_update_and_bound():
    """The default check in float64: where the estimated error meets the bound (1e-8) the
    solve returns the states plus the check's update, whose error is of second order (far
    below the estimate); where it misses it, even by less than float32's bound, the exact
    loop's states. Inputs of graded sizes and two iteration counts cover both sides."""
    torch.manual_seed(0)
    cell = pararnn.ParaGRUCell(6, dtype=torch.float64)
    x = torch.randn(2, 64, 18, dtype=torch.float64)
    errors = []
    for scale in 0.3 * 1.25 ** torch.arange(12, dtype=torch.float64):
        ref, _ = pararnn.RNN(cell, mode="sequential")(x * scale)
        for max_iters in (3, 4):
            rnn = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(max_iters=max_iters))
            out, _ = rnn(x * scale)
            info = rnn.last_solve
            error = float(info.error)
            errors.append(error)
            assert info.converged == (error <= 1e-8) and info.fell_back == (not info.converged)
            if info.converged:
                assert scaled(ref - out, out) <= 1e-3 * error + 1e-15, (scale, max_iters, info)
            else:
                torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert any(1e-8 < e < 1e-6 for e in errors)  # missed by less than 1e-6: falls back
    assert any(1e-13 < e <= 1e-8 for e in errors)  # met, and the update measurably applied


def test_structure_missing_small_entries_is_reported_in_float64():
    """A declared structure that drops entries 1e-3 of the rest is reported: float64 probes
    hold the structured product to 1e-8 of the JVP (the backward would be ~1e-3 off)."""
    from cells_zoo import MisdeclaredCell

    torch.manual_seed(0)
    cell = MisdeclaredCell(dtype=torch.float64)
    with torch.no_grad():
        cell.w.mul_(1e-3)
    with pytest.raises(ValueError, match=r"MisdeclaredCell declares jacobian='diagonal'"):
        pararnn.RNN(cell, mode="parallel")(torch.randn(2, 20, 8, dtype=torch.float64))
