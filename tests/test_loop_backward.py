"""The step loop's adjoint backward (``LoopSolve``, what ``mode="auto"`` trains with on the
CPU when it picks the loop) against autograd through the loop, and the cells' analytic
``linearize`` against autograd through their step."""

import pytest
import torch

import pararnn
from pararnn import _cbuild
from pararnn.cells import cpu_loop
from pararnn.solver import api, newton
from cells_zoo import all_cells
from gradient_checks import assert_gradients_close, loss_gradients

HAS_C = cpu_loop._LIBRARY.get(torch.zeros(1, dtype=torch.float64)) is not None


def without_c_loops(monkeypatch):
    """ParaGRU/ParaLSTM train through the PyTorch loop: the path without a C compiler."""
    monkeypatch.setenv("PARARNN_CPU_KERNELS", "0")


@pytest.fixture(params=["c", "torch"])
def loop_training(request, monkeypatch):
    """auto picks the loop for every shape with gradients, in chunks of 5 steps or fewer;
    ParaGRU/ParaLSTM run their C loops ("c") or the PyTorch loop ("torch")."""
    monkeypatch.setattr(api, "CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD", 0)
    monkeypatch.setattr(newton, "CHUNK_ENTRIES", 5)
    if request.param == "torch":
        without_c_loops(monkeypatch)
    elif not HAS_C:
        pytest.skip("no C compiler")


def gradients(cell, x, h0, mode, **kwargs):
    rnn = pararnn.RNN(cell, mode=mode)
    out, grads = loss_gradients(rnn, x, h0, **kwargs)
    assert rnn.last_solve.mode == "sequential"
    assert (type(out.grad_fn).__name__ == "LoopSolveBackward") == (mode == "auto")
    return grads


def assert_same_gradients(cell, x, h0, **kwargs):
    want = gradients(cell, x, h0, "sequential", **kwargs)  # autograd through the loop
    got = gradients(cell, x, h0, "auto", **kwargs)
    assert_gradients_close(cell, got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 5, 7, 23])
@pytest.mark.parametrize("name", sorted(all_cells()))
def test_loop_backward_matches_autograd(loop_training, name, steps):
    cell = all_cells()[name]
    x = torch.randn(1, steps, cell.input_size, dtype=torch.float64)
    h0 = torch.randn(1, cell.state_size, dtype=torch.float64) * 0.5
    assert_same_gradients(cell, x, h0)


@pytest.mark.parametrize("name", ["paragru", "paralstm", "dense", "block3"])
def test_loop_backward_with_resets_and_packed_sequences(loop_training, name):
    cell = all_cells()[name]
    x = torch.randn(2, 31, cell.input_size, dtype=torch.float64)
    h0 = torch.randn(2, cell.state_size, dtype=torch.float64) * 0.5
    assert_same_gradients(cell, x, h0, resets=torch.rand(2, 31) < 0.15)
    h0s = torch.randn(3, cell.state_size, dtype=torch.float64) * 0.5
    assert_same_gradients(cell, x[:1], h0s, cu_seqlens=torch.tensor([0, 4, 20, 31]))



@pytest.mark.parametrize("layout", ["from zero", "resets", "cu_seqlens"])
@pytest.mark.parametrize("name", sorted(all_cells()))
def test_loop_backward_in_chunks_of_several_steps(monkeypatch, name, layout):
    """Chunks of 3 steps over 8 (3 + 3 + 2), as the default chunk size cuts long sequences:
    each chunk hands J_start^T λ_start (of its first step, not of its second) to the one
    before, and the initial state's gradient is that of the first step's previous state."""
    cell = all_cells()[name]
    monkeypatch.setattr(api, "CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD", 0)
    without_c_loops(monkeypatch)  # the PyTorch loop for ParaGRU/ParaLSTM as well
    batch = 1 if layout == "cu_seqlens" else 2
    monkeypatch.setattr(newton, "CHUNK_ENTRIES", 3 * batch * cell.state_size)
    x = torch.randn(batch, 8, cell.input_size, dtype=torch.float64)
    kwargs = {"from zero": {}, "resets": dict(resets=torch.tensor([[0, 0, 0, 0, 1, 0, 0, 0],
                                                                     [0, 1, 0, 0, 0, 0, 0, 1]],
                                                                    dtype=torch.bool)),
              "cu_seqlens": dict(cu_seqlens=torch.tensor([0, 2, 7, 8]))}[layout]
    h0 = torch.randn(3 if layout == "cu_seqlens" else batch, cell.state_size,
                     dtype=torch.float64) * 0.5
    assert_same_gradients(cell, x, h0, **kwargs)


def assert_auto_trains_as_the_sequential_loop(layer, x):
    """Every parameter's gradient of a loss of the layer's output: auto (the loop's adjoint
    backward) as autograd through the loop (mode="sequential")."""
    grads = {}
    for mode in ("sequential", "auto"):
        layer.mode = mode
        layer.zero_grad()
        layer(x)[0].cos().sum().backward()
        grads[mode] = {n: p.grad.clone() for n, p in layer.named_parameters()}
    for name in grads["sequential"]:
        torch.testing.assert_close(grads["auto"][name], grads["sequential"][name],
                                   rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_layer_trains_through_the_loop_backward(loop_training, layer_cls):
    """Clipped recurrent weights (the clip's gradient too), bias, no h0."""
    layer = layer_cls(6, 8, num_heads=2, recurrent_clip=0.3, dtype=torch.float64)
    with torch.no_grad():
        layer.cell.bias.normal_()
    x = torch.randn(3, 17, 6, dtype=torch.float64)
    assert (layer.cell.a.abs() > 0.3).any()  # some entries clipped: zero gradient there
    assert_auto_trains_as_the_sequential_loop(layer, x)


@pytest.mark.parametrize("loss_reads", ["output", "final state", "both"])
def test_paralstm_output_and_final_state_train_through_the_loop_backward(loop_training,
                                                                         loss_reads):
    """The layer's h (from the C loop a tensor of its own, whose gradient the C backward
    reads beside that of the states) and its final (h, c): every gradient, x and the initial
    state included, that of autograd through the loop."""
    layer = pararnn.ParaLSTM(6, 8, num_heads=2, recurrent_clip=0.3, dtype=torch.float64)
    with torch.no_grad():
        layer.cell.bias.normal_()
    x = torch.randn(3, 17, 6, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(3, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    inputs = [x, *state, *layer.parameters()]
    grads = {}
    for mode in ("sequential", "auto"):
        layer.mode = mode
        out, (h_n, c_n) = layer(x, state)
        loss = {"output": out.cos().sum(), "final state": (h_n * c_n.exp()).sum(),
                "both": out.cos().sum() + (h_n * c_n.exp()).sum()}[loss_reads]
        grads[mode] = torch.autograd.grad(loss, inputs)
        if mode == "auto":  # the C loop's own h, else the view of the states
            assert out.is_contiguous() == (cpu_loop._LIBRARY.get(x) is not None)
    for got, want in zip(grads["auto"], grads["sequential"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_saturated_gates_stay_finite_through_the_loop(loop_training, layer_cls, dtype):
    """Gate pre-activations far beyond exp's range (+-100 and +-1e4 around the biases): the
    loops' outputs and gradients are finite and those of autograd through the loop (the C
    loops' sigmoid, built with fast math, gave NaN where exp overflowed in float32)."""
    layer = layer_cls(4, 8, dtype=dtype)
    with torch.no_grad():
        saturated = torch.tensor([-1e4, -100.0, 100.0, 1e4]).repeat(layer.cell.bias.numel() // 4)
        layer.cell.bias.copy_(saturated.view_as(layer.cell.bias))
    x = torch.randn(2, 9, 4, dtype=dtype, requires_grad=True)
    results = {}
    for mode in ("sequential", "auto"):
        layer.mode = mode
        out, _ = layer(x)
        results[mode] = (out, *torch.autograd.grad(out.cos().sum(), [x, *layer.parameters()]))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else {}
    for got, want in zip(results["auto"], results["sequential"]):
        assert got.isfinite().all()
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.skipif(not HAS_C, reason="no C compiler")
@pytest.mark.parametrize("cell_cls", [pararnn.ParaGRUCell, pararnn.ParaLSTMCell])
def test_c_loop_reads_head_major_pre_activations(cell_cls):
    """The C loops on head-major pre-activations (H, B, T, 3N/H), as a multi-head
    projection writes them, compute the states, tape and gradients of the gate-major
    layout, the input's gradient in the head-major layout."""
    from pararnn.layout import gate_major

    torch.manual_seed(0)
    heads = 3
    cell = cell_cls(12, recurrent_clip=0.5, dtype=torch.float64)
    with torch.no_grad():
        cell.bias.normal_()
    x_heads = torch.randn(heads, 2, 9, 3 * 4, dtype=torch.float64)
    x = gate_major(x_heads, 3)
    h0 = torch.randn(2, cell.state_size, dtype=torch.float64)
    loop, parameters = cell.compiled_loop(x), dict(cell.named_parameters())
    want = loop.forward(parameters, x, h0, True)
    got = loop.forward(parameters, x_heads, h0, True, heads)
    for g, w in zip(got, want):
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
    grad_states = torch.randn_like(want[0])
    want = loop.backward(parameters, want[1], want[0], h0, grad_states)
    got = loop.backward(parameters, got[1], got[0], h0, grad_states, None, heads)
    assert got[0].shape == x_heads.shape
    torch.testing.assert_close(gate_major(got[0], 3), want[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-14)
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="must be \\(H, B, T, 3N/H\\)"):
        loop.forward(parameters, x, h0, heads=heads)


@pytest.mark.skipif(not HAS_C, reason="no C compiler")
@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_multi_head_layer_hands_the_c_loop_its_head_major_projection(layer_cls, monkeypatch):
    """Training a multi-head layer through the C loop, the projection's head-major output
    goes to the loop as it is (no gate-major copy either way); in mode="parallel" the
    solver takes the gate-major copy."""
    from pararnn.layout import HeadMajor

    monkeypatch.setattr(api, "CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD", 0)
    copies, loop_heads = [], []
    gate_major = HeadMajor.gate_major
    monkeypatch.setattr(HeadMajor, "gate_major", lambda self: copies.append(1) or gate_major(self))
    forward = cpu_loop.CompiledLoop.forward
    monkeypatch.setattr(cpu_loop.CompiledLoop, "forward",
                        lambda self, *args: loop_heads.append(args[-1]) or forward(self, *args))
    layer = layer_cls(6, 8, num_heads=2, recurrent_clip=0.3, dtype=torch.float64)
    x = torch.randn(3, 17, 6, dtype=torch.float64)
    layer(x)[0].sum().backward()
    assert loop_heads == [2] and not copies
    layer.mode = "parallel"
    layer(x)[0].sum().backward()
    assert copies == [1]


def test_loop_backward_rejects_double_backward(loop_training):
    x = torch.randn(1, 4, 12, dtype=torch.float64, requires_grad=True)
    out, _ = pararnn.RNN(pararnn.ParaGRUCell(4, dtype=torch.float64))(x)
    with pytest.raises(RuntimeError, match="step loop's adjoint backward .* does not support double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


@pytest.mark.parametrize("cell", [pararnn.ParaGRUCell(5, recurrent_clip=0.4, dtype=torch.float64),
                                  pararnn.ParaLSTMCell(5, recurrent_clip=0.4, dtype=torch.float64)])
def test_analytic_linearize_matches_autograd(cell):
    """Jacobian and every input/parameter gradient of the pullback, at random points."""
    with torch.no_grad():
        cell.bias.normal_()
        cell.a.mul_(3)  # past the clip in places
    x = torch.randn(2, 3, cell.input_size, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 3, cell.state_size, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(2, 3, cell.state_size, dtype=torch.float64)
    jac, pullback = cell.linearize(x, h)
    _, want_jac = cell.step_and_jacobian(x, h)
    torch.testing.assert_close(jac, want_jac.detach(), rtol=1e-12, atol=1e-14)
    outputs, cotangents = zip(*pullback(cotangent))
    inputs = [x, h, *cell.parameters()]
    got = torch.autograd.grad(outputs, inputs, cotangents)
    want = torch.autograd.grad(cell.step(x, h), inputs, cotangent)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def pullback_gradients(pullback, cotangent, inputs):
    outputs, grads = zip(*pullback(cotangent))
    return torch.autograd.grad(outputs, inputs, grads)


@pytest.mark.parametrize("cell", [pararnn.ParaGRUCell(5, recurrent_clip=0.4, dtype=torch.float64),
                                  pararnn.ParaLSTMCell(5, recurrent_clip=0.4, dtype=torch.float64)])
def test_taping_stepper_matches_the_step_and_its_tape_the_linearization(cell):
    """The loop that records the gates gives the states of ``step``, and ``linearize`` from
    that tape gives the Jacobians and pullback it gives without one."""
    with torch.no_grad():
        cell.bias.normal_()
    x = torch.randn(2, 6, cell.input_size, dtype=torch.float64)
    h0 = torch.randn(2, cell.state_size, dtype=torch.float64)
    with torch.no_grad():
        step, tape = cell.taping_stepper(x)
        states, h = [], h0
        for t in range(x.shape[1]):
            h = step(t, h)
            states.append(h)
        states = torch.stack(states, dim=1)
        previous = torch.cat((h0.unsqueeze(1), states[:, :-1]), dim=1)
        torch.testing.assert_close(states, cell.step(x, previous), rtol=1e-13, atol=1e-14)
    x.requires_grad_()
    cotangent = torch.randn_like(states)
    (jac, pullback), (want_jac, want_pullback) = (
        cell.linearize(x, previous, **options) for options in ({"tape": tape}, {}))
    torch.testing.assert_close(jac, want_jac, rtol=1e-13, atol=1e-14)
    inputs = [x, *cell.parameters()]
    got, want = (pullback_gradients(pb, cotangent, inputs) for pb in (pullback, want_pullback))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)


def test_loop_backward_uses_the_forward_parameters(loop_training):
    """gradcheck through parameters swapped in by functional_call: the backward, which runs
    after the swap is undone, must differentiate the tensors the forward used."""
    cell = pararnn.ParaLSTMCell(3, recurrent_clip=0.6, dtype=torch.float64)
    rnn = pararnn.RNN(cell)
    x = torch.randn(2, 6, 9, dtype=torch.float64)
    a = cell.a.detach().clone().requires_grad_()

    def fn(a):
        return torch.func.functional_call(rnn, {"cell.a": a}, (x,))[0]

    assert torch.autograd.gradcheck(fn, (a,))


@pytest.mark.skipif(not HAS_C, reason="no C compiler")
@pytest.mark.parametrize("threads", [1, 3])
def test_c_loops_run_where_they_apply(monkeypatch, threads):
    """float32/float64 ParaGRU/ParaLSTM on the CPU; not bfloat16, not a subclass that
    changes the step. Batch rows split over threads: the same gradients."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # the C loops' thread count
    monkeypatch.setattr(api, "CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD", 0)
    calls = []
    backward = cpu_loop.CompiledLoop.backward
    monkeypatch.setattr(cpu_loop.CompiledLoop, "backward",
                        lambda *args: calls.append(1) or backward(*args))

    class Shifted(pararnn.ParaGRUCell):
        def step(self, x, h_prev):
            return super().step(x, h_prev) + 0.1

    for cell in (pararnn.ParaGRUCell(4), pararnn.ParaLSTMCell(4)):
        for dtype in (torch.float32, torch.float64):
            loop = cell.compiled_loop(torch.zeros(1, dtype=dtype))
            assert isinstance(loop, cpu_loop.CompiledLoop)
        assert cell.compiled_loop(torch.zeros(1, dtype=torch.bfloat16)) is None
    assert Shifted(4).compiled_loop(torch.zeros(1)) is None
    for name in ("paragru", "paralstm"):
        cell = all_cells()[name]
        x = torch.randn(5, 9, cell.input_size, dtype=torch.float64)
        h0 = torch.randn(5, cell.state_size, dtype=torch.float64)
        want = gradients(cell, x, h0, "sequential")
        got = gradients(cell, x, h0, "auto")
        assert_gradients_close(cell, got, want, rtol=1e-10, atol=1e-12)
    assert len(calls) == 2


def test_c_build_failure_warns_once_and_switch_off_is_silent(monkeypatch, recwarn):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    library = _cbuild.CLibrary("loops", cpu_loop._SOURCE, "the PyTorch loop runs instead")
    x = torch.zeros(1)
    with pytest.warns(RuntimeWarning, match="could not build the C code for loops"):
        assert library.get(x) is None
    recwarn.clear()
    assert library.get(x) is None and not recwarn  # once per process
    monkeypatch.setenv("PARARNN_CPU_KERNELS", "0")
    assert cpu_loop._LIBRARY.get(x) is None and not recwarn


class _Bounded(torch.nn.Module):
    def forward(self, a):
        return 0.9 * torch.tanh(a)


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_parametrized_recurrent_weights_train_through_the_loop(loop_training, layer_cls):
    """A parametrization of ``a`` (torch.nn.utils.parametrize): the C loop, which reads the
    parameters themselves, steps aside (it failed with KeyError 'a'), and every mode
    gives autograd's gradients through the parametrization."""
    layer = layer_cls(4, 8, dtype=torch.float64)
    torch.nn.utils.parametrize.register_parametrization(layer.cell, "a", _Bounded())
    assert_auto_trains_as_the_sequential_loop(layer, torch.randn(3, 9, 4, dtype=torch.float64))


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_own_recurrent_weights_train_through_the_loop(loop_training, layer_cls):
    """A cell subclass computing its recurrent weights itself: the C loop and the fused
    kernels, which clamp the raw parameters themselves, step aside (the C loop trained
    with the clamp's weights: outputs 0.8 off), and every mode gives the sequential loop's
    gradients."""
    base = type(layer_cls(4, 8).cell)

    class Bounded(base):
        def recurrent_weights(self):
            if isinstance(self, pararnn.ParaLSTMCell):
                return 0.5 * torch.tanh(self.a), 0.5 * torch.tanh(self.peephole)
            return 0.5 * torch.tanh(self.a)

    layer = layer_cls(4, 8, dtype=torch.float64)
    layer.cell.__class__ = Bounded
    with torch.no_grad():
        for p in layer.cell.parameters():
            p.normal_(0.0, 5.0)
    assert layer.cell.compiled_loop(torch.zeros(1)) is None and layer.cell.fused_solver() is None
    assert_auto_trains_as_the_sequential_loop(layer, torch.randn(3, 9, 4, dtype=torch.float64))


@pytest.mark.parametrize("frozen", ["a", "peephole"])
def test_paralstm_trains_through_the_loop_with_a_frozen_recurrent_vector(loop_training, frozen):
    """A frozen ``a`` or ``peephole`` gets no gradient; the rest the sequential loop's (the C
    loop's backward asked autograd for the frozen one's and failed)."""
    layer = pararnn.ParaLSTM(4, 8, dtype=torch.float64)
    getattr(layer.cell, frozen).requires_grad_(False)
    x = torch.randn(3, 9, 4, dtype=torch.float64)
    grads = {}
    for mode in ("sequential", "auto"):
        layer.mode = mode
        layer.zero_grad()
        layer(x)[0].cos().sum().backward()
        grads[mode] = {n: p.grad for n, p in layer.named_parameters()}
    assert grads["auto"][f"cell.{frozen}"] is None
    for name, want in grads["sequential"].items():
        if want is not None:
            torch.testing.assert_close(grads["auto"][name], want, rtol=1e-10, atol=1e-12, msg=name)
