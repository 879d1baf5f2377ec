"""Parallel (Newton + scan) equals sequential, for every cell, size and sequence layout."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

import pararnn
from pararnn.solver import api
from cells_zoo import CONVERGED, all_cells

STEPS = [1, 2, 7, 257, 1000]


def run(cell, x, h0=None, mode="parallel", **kwargs):
    rnn = pararnn.RNN(cell, mode=mode, newton=pararnn.NewtonConfig(**CONVERGED))
    out, h_n = rnn(x, h0, **kwargs)
    return out, h_n, rnn.last_solve


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", sorted(all_cells()))
def test_parallel_equals_sequential_float64(name, steps):
    cell = all_cells()[name]
    batch = 1 if steps == 1000 else 3
    x = torch.randn(batch, steps, cell.input_size, dtype=torch.float64)
    h0 = torch.randn(batch, cell.state_size, dtype=torch.float64) * 0.5
    for initial in (None, h0):
        ref, ref_n, _ = run(cell, x, initial, mode="sequential")
        out, out_n, info = run(cell, x, initial)
        assert info.mode == "parallel" and info.converged
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out_n, ref_n, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out_n, out[:, -1])


@pytest.mark.parametrize("name", sorted(all_cells()))
def test_parallel_equals_sequential_float32(name):
    torch.manual_seed(1)
    cell = all_cells(torch.float32)[name]
    x = torch.randn(4, 257, cell.input_size)
    ref, _, _ = run(cell, x, mode="sequential")
    rnn = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(max_iters=30, tol=1e-5))
    out, _ = rnn(x)
    assert rnn.last_solve.converged
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize("name", ["paragru", "paralstm", "diagonal", "block2"])
def test_default_three_iterations_reach_float32_precision(name):
    """The default (3 iterations, then a check: one more update from the last Jacobians,
    whose size estimates the error) converges for well-behaved cells: no fallback, and the
    unchecked config's 3 iterations differ from it by less than the bound."""
    cell = all_cells(torch.float32)[name]
    x = torch.randn(2, 1000, cell.input_size) * 0.5
    ref = pararnn.RNN(cell, mode="sequential")(x)[0]
    rnn = pararnn.RNN(cell, mode="parallel")
    out = rnn(x)[0]
    info = rnn.last_solve
    assert info.iterations == 3 and float(info.residual) <= 1e-4 and float(info.error) <= 1e-4
    assert info.converged and not info.fell_back
    assert (out - ref).abs().max().item() < 1e-4
    unchecked = pararnn.RNN(cell, mode="parallel", newton=pararnn.NewtonConfig(tol=None))
    # the update (plus the float32 rounding of adding it) is all that separates them
    bound = float(info.error) * (1 + out.abs().max().item()) + 1e-6
    assert (unchecked(x)[0] - out).abs().max().item() <= bound
    assert unchecked.last_solve.residual is None and unchecked.last_solve.error is None
    assert unchecked.last_solve.converged is None


@pytest.mark.parametrize("name", sorted(all_cells()))
def test_resets_restart_from_h0(name):
    cell = all_cells()[name]
    x = torch.randn(2, 40, cell.input_size, dtype=torch.float64)
    h0 = torch.randn(2, cell.state_size, dtype=torch.float64) * 0.5
    resets = torch.zeros(2, 40, dtype=torch.bool)
    resets[0, [5, 17, 39]] = True
    resets[1, 1] = True
    ref, ref_n, _ = run(cell, x, h0, mode="sequential", resets=resets)
    out, out_n, _ = run(cell, x, h0, resets=resets)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_n, ref_n, rtol=1e-10, atol=1e-10)
    # Independent check: the segment after a reset equals a fresh run from h0.
    fresh, _, _ = run(cell, x[:1, 17:39], h0[:1], mode="sequential")
    torch.testing.assert_close(out[:1, 17:39], fresh, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
@pytest.mark.parametrize("name", ["paralstm", "dense"])
def test_cu_seqlens_equals_separate_sequences(name, mode):
    cell = all_cells()[name]
    lengths = [5, 1, 12, 7]
    seqs = [torch.randn(1, n, cell.input_size, dtype=torch.float64) for n in lengths]
    h0 = torch.randn(len(lengths), cell.state_size, dtype=torch.float64) * 0.5
    cu = torch.tensor([0, 5, 6, 18, 25], dtype=torch.int32)
    out, h_n, _ = run(cell, torch.cat(seqs, dim=1), h0, mode=mode, cu_seqlens=cu)
    assert h_n.shape == (4, cell.state_size)
    for i, seq in enumerate(seqs):
        ref, ref_n, _ = run(cell, seq, h0[i : i + 1], mode="sequential")
        torch.testing.assert_close(out[:, cu[i] : cu[i + 1]], ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(h_n[i], ref_n[0], rtol=1e-10, atol=1e-10)


def test_chunked_processing_continues_from_final_state():
    layer = pararnn.ParaGRU(4, 8, dtype=torch.float64, newton=pararnn.NewtonConfig(**CONVERGED))
    x = torch.randn(2, 90, 4, dtype=torch.float64)
    whole, h_whole = layer(x)
    first, h_mid = layer(x[:, :50])
    second, h_end = layer(x[:, 50:], h_mid)
    torch.testing.assert_close(torch.cat((first, second), 1), whole, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_end, h_whole, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_reference_layers_parallel_equals_sequential(layer_cls):
    layer = layer_cls(12, 16, num_heads=4, dtype=torch.float64, newton=pararnn.NewtonConfig(**CONVERGED))
    x = torch.randn(3, 257, 12, dtype=torch.float64)
    layer.mode = "sequential"
    ref, ref_state = layer(x)
    layer.mode = "parallel"
    out, state = layer(x)
    assert out.shape == (3, 257, 16)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    ref_state if isinstance(ref_state, tuple) else (ref_state,)):
        assert a.shape == (3, 16)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["sequential", "parallel", "auto"])
@pytest.mark.parametrize("name", ["paragru", "paralstm", "dense"])
def test_solve_hidden_is_the_cells_hidden_part_of_the_states(monkeypatch, name, mode):
    """``hidden=True`` returns ``cell.hidden(states)`` (ParaLSTM's h, all of it otherwise),
    with and without gradients (auto with them: the loop's Function, and ParaGRU's and
    ParaLSTM's C loop), and the same final state."""
    monkeypatch.setattr(api, "CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD", 0)
    cell = all_cells()[name]
    x = torch.randn(2, 9, cell.input_size, dtype=torch.float64)
    newton = pararnn.NewtonConfig(**CONVERGED)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            states, h_n, _ = pararnn.solve(cell, x, mode=mode, newton=newton)
            hidden, hidden_h_n, _ = pararnn.solve(cell, x, mode=mode, newton=newton, hidden=True)
        want = states[..., 1::2] if name == "paralstm" else states
        torch.testing.assert_close(hidden, want, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(hidden_h_n, h_n, rtol=1e-12, atol=1e-14)
        assert hidden.requires_grad == grad


def test_lstm_state_in_and_out():
    lstm = pararnn.ParaLSTM(3, 4, dtype=torch.float64, newton=pararnn.NewtonConfig(**CONVERGED))
    x = torch.randn(2, 30, 3, dtype=torch.float64)
    _, (h_mid, c_mid) = lstm(x[:, :10])
    tail, (h_n, c_n) = lstm(x[:, 10:], (h_mid, c_mid))
    whole, (h_ref, c_ref) = lstm(x)
    torch.testing.assert_close(tail, whole[:, 10:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c_n, c_ref, rtol=1e-10, atol=1e-10)


def test_unbatched_and_time_first_layouts():
    cell = all_cells()["diagonal"]
    x = torch.randn(2, 9, cell.input_size, dtype=torch.float64)
    batched, h_n = pararnn.RNN(cell)(x)
    single, h_single = pararnn.RNN(cell)(x[1])
    torch.testing.assert_close(single, batched[1])
    torch.testing.assert_close(h_single, h_n[1])
    time_first, h_tf = pararnn.RNN(cell, batch_first=False)(x.transpose(0, 1))
    torch.testing.assert_close(time_first.transpose(0, 1), batched)
    torch.testing.assert_close(h_tf, h_n)


def test_bfloat16_inputs_run_state_math_in_float32():
    cell = pararnn.ParaGRUCell(16)
    x = torch.randn(2, 64, 48)
    ref, _ = pararnn.RNN(cell)(x)
    out, h_n = pararnn.RNN(cell)(x.bfloat16())
    assert out.dtype == torch.bfloat16 and h_n.dtype == torch.float32  # state kept in fp32
    # Only the input and output roundings of bf16: the recurrence itself ran in fp32.
    assert (out.float() - ref).abs().max() < 2e-2

    layer = pararnn.ParaGRU(8, 16)
    x = torch.randn(2, 64, 8)
    ref, _ = layer(x)
    with pytest.raises(TypeError, match="torch.autocast"):
        layer(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto_out, _ = layer(x)
    assert auto_out.dtype == torch.bfloat16  # projection in bf16, recurrence in fp32
    assert (auto_out.float() - ref).abs().max() < 3e-2


def test_auto_mode_and_solve_info():
    layer = pararnn.ParaGRU(4, 8)
    layer(torch.randn(1, 1, 4))
    assert layer.last_solve.mode == "sequential"  # a single step needs no Newton
    layer(torch.randn(1, 5, 4))
    assert layer.last_solve.mode == "parallel" and layer.last_solve.backend == "torch"


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(sorted(all_cells())),
    batch=st.integers(1, 4),
    steps=st.integers(1, 150),
    with_h0=st.booleans(),
    reset_rate=st.sampled_from([0.0, 0.05, 0.3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_parallel_equals_sequential(name, batch, steps, with_h0, reset_rate, seed):
    torch.manual_seed(seed)
    cell = all_cells()[name]
    x = torch.randn(batch, steps, cell.input_size, dtype=torch.float64)
    h0 = torch.randn(batch, cell.state_size, dtype=torch.float64) * 0.5 if with_h0 else None
    resets = torch.rand(batch, steps) < reset_rate
    ref, ref_n, _ = run(cell, x, h0, mode="sequential", resets=resets)
    out, out_n, _ = run(cell, x, h0, resets=resets)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_n, ref_n, rtol=1e-10, atol=1e-10)


def steps_since_start(starts):
    """``(B, T)``: how many steps each step lies after the last start at or before it."""
    since = torch.zeros(starts.shape, dtype=torch.long)
    for t in range(1, starts.shape[1]):
        since[:, t] = torch.where(starts[:, t], 0, since[:, t - 1] + 1)
    return since


@pytest.mark.parametrize("layout", ["resets", "cu_seqlens"])
@pytest.mark.parametrize("name", sorted(all_cells()))
def test_newton_iterates_are_exact_on_the_first_steps_of_every_sequence(name, layout):
    """The initial guess is exact at every start (``f(h0, x_t)``) and each Newton iteration
    makes one more step exact (the linearised step is exact where the state before it is):
    after k iterations the first k + 1 steps after every start equal the loop to rounding.
    A Jacobian left unmasked at a restart, or a guess that ignores h0, breaks that."""
    cell = all_cells()[name]
    steps = 30
    if layout == "resets":
        x = torch.randn(2, steps, cell.input_size, dtype=torch.float64) * 2
        h0 = torch.randn(2, cell.state_size, dtype=torch.float64)
        starts = torch.zeros(2, steps, dtype=torch.bool)
        starts[0, [6, 19]] = True
        starts[1, 11] = True
        kwargs = dict(resets=starts.clone())
    else:
        x = torch.randn(1, steps, cell.input_size, dtype=torch.float64) * 2
        h0 = torch.randn(3, cell.state_size, dtype=torch.float64)
        starts = torch.zeros(1, steps, dtype=torch.bool)
        starts[0, [8, 21]] = True
        kwargs = dict(cu_seqlens=torch.tensor([0, 8, 21, steps]))
    starts[:, 0] = True
    ref, _ = pararnn.RNN(cell, mode="sequential")(x, h0, **kwargs)
    since = steps_since_start(starts)
    for iterations in (1, 2):
        rnn = pararnn.RNN(cell, mode="parallel",
                          newton=pararnn.NewtonConfig(max_iters=iterations, tol=None))
        out, _ = rnn(x, h0, **kwargs)
        exact = since <= iterations
        torch.testing.assert_close(out[exact], ref[exact], rtol=0, atol=1e-13)


@pytest.mark.parametrize("mode", ["sequential", "parallel", "auto"])
@pytest.mark.parametrize("name", ["paragru", "dense"])
def test_bfloat16_initial_state_is_taken_in_float32(monkeypatch, name, mode):
    """h0 may come in x's dtype (bfloat16): the solve converts it to the compute dtype
    (float32), in every mode and also where auto trains through the loop, and so gives
    exactly the float32 solve of the same values (a bfloat16 h0 met float32 states and
    weights: a dtype error). The structure probe takes the bfloat16 x in float32 too."""
    monkeypatch.setattr(api, "CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD", 0)
    cell = all_cells(torch.float32)[name]
    x = torch.randn(2, 20, cell.input_size).bfloat16()
    h0 = torch.randn(2, cell.state_size).bfloat16()
    for grad in (False, True):
        out, h_n, _ = pararnn.solve(cell, x.clone().requires_grad_(grad), h0, mode=mode)
        ref, ref_n, _ = pararnn.solve(cell, x.float(), h0.float(), mode=mode)
        assert out.dtype == torch.bfloat16 and h_n.dtype == torch.float32
        assert torch.equal(out, ref.bfloat16()) and torch.equal(h_n, ref_n)
