"""The projected decode steps (multi-head input projection + cell step in one kernel)
against the projection followed by the cell's step, and their routing in
:func:`pararnn.models.rnn_mixer.recurrent_step`."""

import pytest
import torch

pytest.importorskip("triton")

from pararnn.cells import ParaGRUCell, ParaLSTMCell  # noqa: E402
from pararnn.generation import Generator  # noqa: E402
from pararnn.kernels import decode_step, interpreter_enabled  # noqa: E402
from pararnn.layers import ParaGRU, ParaLSTM  # noqa: E402
from pararnn.layers.projection import MultiHeadProjection  # noqa: E402
from pararnn.models import build_model, preset, rnn_mixer  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
if not CUDA and not interpreter_enabled():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

# (heads, inputs, channels): one head with an input wider than a block of the kernel's
# loop (256) and channels that do not fill a block; 2 heads of 5 channels; 4 heads
SHAPES = {1: (300, 6), 2: (10, 10), 4: (32, 16)}


def _layer(kind, heads, proj_bias=False):
    """A ParaGRU/ParaLSTM layer with random parameters beyond the clip (clipping matters)."""
    inputs, n = SHAPES[heads]
    layer = (ParaGRU if kind == "gru" else ParaLSTM)(inputs, n, num_heads=heads, recurrent_clip=0.5)
    if proj_bias:  # the layers keep the gate bias in the cell; a projection may have its own
        layer.projection.bias = torch.nn.Parameter(torch.empty(3 * n))
    with torch.no_grad():
        for p in layer.cell.parameters():
            p.normal_(0.0, 1.0)
        if proj_bias:
            layer.projection.bias.normal_(0.0, 1.0)
    return layer.to(DEVICE)


def _states(kind, batch, n):
    return [torch.randn(batch, n, device=DEVICE) for _ in range(1 if kind == "gru" else 2)]


def _reference64(kind, layer, u, states):
    """Projection and cell step in float64 from the operands as given (bf16 values exactly)."""
    weight = layer.projection.weight.double()
    heads, _, head_out, head_in = weight.shape
    pre = torch.einsum("bhd,hgnd->bghn", u.double().unflatten(-1, (heads, head_in)), weight).flatten(1)
    if layer.projection.bias is not None:
        pre = pre + layer.projection.bias.double()
    cell = layer.cell.double()
    states = [s.double() for s in states]
    try:
        if kind == "gru":
            return [cell.step(pre, states[0])]
        return list(ParaLSTMCell.unpack_state(cell.step(pre, ParaLSTMCell.pack_state(*states))))
    finally:
        cell.float()


def _projected(kind, layer, u, states, out=None):
    proj = layer.projection
    if kind == "gru":
        return [decode_step.gru_projected_step(u, proj.weight, proj.bias, layer.cell, states[0],
                                               out=None if out is None else out[0])]
    return list(decode_step.lstm_projected_step(u, proj.weight, proj.bias, layer.cell, *states, out=out))


def _unfused(kind, layer, u, states):
    """The projection, then the fused cell step (what a larger batch runs)."""
    pre = layer.projection(u).contiguous()
    if kind == "gru":
        return [decode_step.gru_step(pre, layer.cell, states[0])]
    return list(decode_step.lstm_step(pre, layer.cell, *states))


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("heads,proj_bias,batch", [(1, True, 1), (2, False, 3), (4, True, 3), (4, False, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_projected_step_equals_projection_then_step(kind, heads, proj_bias, batch, dtype):
    """Float32 accumulation of the operands' values: float64 math to float32 rounding, and
    in float32 the projection followed by the cell step to ~1e-6 (bf16: the unfused path
    rounds the pre-activations to bf16, the fused one keeps them in registers)."""
    torch.manual_seed(heads + batch)
    layer = _layer(kind, heads, proj_bias)
    layer.projection.to(dtype)
    u = torch.randn(batch, SHAPES[heads][0], device=DEVICE).to(dtype)
    states = _states(kind, batch, SHAPES[heads][1])
    got = _projected(kind, layer, u, states)
    for g, e in zip(got, _reference64(kind, layer, u, states)):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), e, atol=2e-6, rtol=2e-6)
    unfused_tol = 1e-5 if dtype == torch.float32 else 3e-2
    for g, e in zip(got, _unfused(kind, layer, u, states)):
        torch.testing.assert_close(g, e, atol=unfused_tol, rtol=unfused_tol)


@pytest.mark.parametrize("batch", [1, 2, 4, 16, 64, 1000])
def test_launch_plan_covers_the_problem(batch):
    """At the small model's shape (4 heads of 256 -> 3 x 256): every (row, channel) has a
    program, no block of rows is wholly empty, there are programs for every SM, and batch
    1 gets one row per program."""
    heads, head_out, head_in = 4, 256, 256
    (channel_blocks, grid_heads, row_blocks), block_n, block_k, rows = decode_step._projected_launch(
        batch, heads, head_out, head_in)
    assert grid_heads == heads and channel_blocks * block_n >= head_out and block_k == 256
    assert row_blocks * rows >= batch > (row_blocks - 1) * rows
    assert channel_blocks * heads * row_blocks >= decode_step._TARGET_PROGRAMS
    if batch == 1:
        assert rows == 1 and block_n == 4


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("batch", [3, 5])
def test_projected_step_with_several_rows_per_program(kind, batch, monkeypatch):
    """A launch plan whose programs take several batch rows (the last block partly empty)."""
    monkeypatch.setattr(decode_step, "_TARGET_PROGRAMS", 4)
    inputs, n = SHAPES[2]
    grid, _, _, rows = decode_step._projected_launch(batch, 2, n // 2, inputs // 2)
    assert rows > 1 and grid[2] * rows > batch
    layer = _layer(kind, 2, proj_bias=True)
    u = torch.randn(batch, inputs, device=DEVICE)
    states = _states(kind, batch, n)
    for g, e in zip(_projected(kind, layer, u, states), _reference64(kind, layer, u, states)):
        torch.testing.assert_close(g.double(), e, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_projected_step_in_place(kind):
    """Writing the new state over the old one gives what a fresh output holds."""
    layer = _layer(kind, 2, proj_bias=True)
    u = torch.randn(3, SHAPES[2][0], device=DEVICE)
    states = _states(kind, 3, SHAPES[2][1])
    fresh = _projected(kind, layer, u, states)
    _projected(kind, layer, u, states, out=tuple(states))
    for f, s in zip(fresh, states):
        assert torch.equal(f, s)


def _step_with(monkeypatch, max_batch, layer, u, state, out=None):
    """:func:`recurrent_step` with the kernels routed on this device (Triton's interpreter
    on a CPU) and the projection fused up to ``max_batch`` rows."""
    monkeypatch.setattr(rnn_mixer, "_KERNEL_DEVICES", ("cuda", DEVICE.type))
    monkeypatch.setattr(rnn_mixer, "FUSED_PROJECTION_MAX_BATCH", max_batch)
    with torch.no_grad():
        return rnn_mixer.recurrent_step(layer, u, state, out=out)


def _spy(monkeypatch):
    """Records the names of the decode-step kernels that run."""
    calls = []
    for name in ("gru_step", "lstm_step", "gru_projected_step", "lstm_projected_step"):
        def spy(*args, _name=name, _fn=getattr(decode_step, name), **kwargs):
            calls.append(_name)
            return _fn(*args, **kwargs)
        monkeypatch.setattr(decode_step, name, spy)
    return calls


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_recurrent_step_routes_small_batches_through_the_projected_kernel(kind, monkeypatch):
    """Up to FUSED_PROJECTION_MAX_BATCH rows the projected kernel, above it the projection
    and the fused cell step, without kernels the layer's own step: the same new state,
    written into ``out`` in place."""
    layer = _layer(kind, 4)
    u = torch.randn(3, 1, SHAPES[4][0], device=DEVICE)
    states = _states(kind, 3, SHAPES[4][1])
    state = tuple(states) if kind == "lstm" else states[0]
    calls = _spy(monkeypatch)
    monkeypatch.setattr(rnn_mixer, "_KERNEL_DEVICES", ())
    with torch.no_grad():
        y_own, own = rnn_mixer.recurrent_step(layer, u, state)
    assert calls == []
    y_unfused, unfused = _step_with(monkeypatch, 2, layer, u, state)
    assert calls == [f"{kind}_step"]
    buffers = tuple(s.clone() for s in states)
    y_fused, fused = _step_with(monkeypatch, 3, layer, u, buffers if kind == "lstm" else buffers[0],
                                out=buffers)
    assert calls == [f"{kind}_step", f"{kind}_projected_step"]
    as_list = (lambda s: list(s)) if kind == "lstm" else (lambda s: [s])
    for f, o, b in zip(as_list(fused), as_list(own), buffers):
        assert f is b
        torch.testing.assert_close(f, o, atol=1e-5, rtol=1e-5)
    for f, un in zip(as_list(fused), as_list(unfused)):
        torch.testing.assert_close(f, un, atol=1e-5, rtol=1e-5)
    assert y_fused.shape == (3, 1, SHAPES[4][1])
    torch.testing.assert_close(y_fused, y_own, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_unfused, y_own, atol=1e-5, rtol=1e-5)


def test_recurrent_step_keeps_the_layers_own_computation_for_subclasses(monkeypatch):
    """A cell whose subclass changes the step runs no kernel; a projection whose subclass
    changes the product runs itself, then the fused cell step."""

    class ScaledCell(ParaGRUCell):
        def step(self, x, h_prev):
            return 2 * super().step(x, h_prev)

    class ScaledProjection(MultiHeadProjection):
        def forward(self, x):
            return 2 * super().forward(x)

    inputs, n = SHAPES[2]
    layer = _layer("gru", 2)
    u, h = torch.randn(1, 1, inputs, device=DEVICE), torch.randn(1, n, device=DEVICE)
    with torch.no_grad():
        expected = 2 * layer.cell.step(2 * layer.projection(u[:, 0]), h)
    projection = ScaledProjection(inputs, n, 3, num_heads=2, bias=False).to(DEVICE)
    projection.load_state_dict(layer.projection.state_dict())
    layer.projection = projection
    cell = ScaledCell(n, recurrent_clip=0.5).to(DEVICE)
    cell.load_state_dict(layer.cell.state_dict())
    calls = _spy(monkeypatch)
    _, with_own_projection = _step_with(monkeypatch, 16, layer, u, h)
    assert calls == ["gru_step"]
    layer.cell = cell
    _, with_own_cell = _step_with(monkeypatch, 16, layer, u, h)
    assert calls == ["gru_step"]
    torch.testing.assert_close(with_own_cell, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(2 * with_own_projection, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_projected_step_under_autocast(kind, monkeypatch):
    """Under autocast the kernel multiplies what the projection would: the input and the
    float32 weights rounded to the autocast dtype, products accumulated in float32."""
    layer = _layer(kind, 2)
    u = torch.randn(2, 1, SHAPES[2][0], device=DEVICE)
    states = _states(kind, 2, SHAPES[2][1])
    calls = _spy(monkeypatch)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        _, new = _step_with(monkeypatch, 16, layer, u, tuple(states) if kind == "lstm" else states[0])
    assert calls == [f"{kind}_projected_step"]
    weight = layer.projection.weight.data
    layer.projection.weight.data = weight.to(torch.bfloat16)
    expected = _reference64(kind, layer, u[:, 0].to(torch.bfloat16), states)
    for g, e in zip(new if kind == "lstm" else [new], expected):
        torch.testing.assert_close(g.double(), e, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("model", ["paragru", "paralstm"])
def test_decode_through_the_projected_kernel_equals_the_parallel_forward(model, monkeypatch):
    """A two-layer LM with the paper's block (conv window, gated norm), decoded through the
    projected kernels from a prefill: the logits of the parallel forward over the sequence."""
    monkeypatch.setattr(rnn_mixer, "_KERNEL_DEVICES", ("cuda", DEVICE.type))
    # channel blocks of 16 rather than 4 (16 programs a step instead of 64, one row each):
    # the block sizes are the unit tests' above, this one is about the LM's decode
    monkeypatch.setattr(decode_step, "_TARGET_PROGRAMS", 16)
    calls = _spy(monkeypatch)
    torch.manual_seed(0)
    lm = build_model(preset(model, "nano", block="tuned", vocab_size=64, rnn_heads=2)).to(DEVICE).eval()
    seq = torch.randint(0, 64, (2, 7), device=DEVICE)
    generator = Generator(lm, cuda_graph=False, compile=False)
    with torch.no_grad():
        logits = [generator.prefill(seq[:, :4], max_len=8)]
        logits += [generator.step(token).clone() for token in seq[:, 4:].T]
        expected = lm(seq)[:, 3:]
    assert calls == [f"{model[4:]}_projected_step"] * 2 * 3
    torch.testing.assert_close(torch.stack(logits, 1), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not CUDA, reason="tracing runs the launcher on fake tensors, which Triton's interpreter cannot")
@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_recurrent_step_compiles_in_one_graph(kind, backend):
    """``torch.compile(fullgraph=True)`` traces a decode step through the projected
    kernel, updating the state buffers in place, and computes what the eager step does."""
    layer = _layer(kind, 4, proj_bias=True)
    u = torch.randn(2, 1, SHAPES[4][0], device=DEVICE)
    states = _states(kind, 2, SHAPES[4][1])
    buffers = tuple(s.clone() for s in states)

    def step(u, *state):
        y, _ = rnn_mixer.recurrent_step(layer, 2 * u, tuple(state) if kind == "lstm" else state[0],
                                        out=state)
        return y + 1

    with torch.no_grad():
        _, expected = rnn_mixer.recurrent_step(layer, u, tuple(states) if kind == "lstm" else states[0])
        y = torch.compile(step, fullgraph=True, backend=backend)(u / 2, *buffers)
    expected = list(expected) if kind == "lstm" else [expected]
    for e, b in zip(expected, buffers):
        torch.testing.assert_close(b, e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[:, 0], expected[0] + 1, atol=1e-5, rtol=1e-5)


def test_bad_shapes():
    layer = _layer("gru", 2, proj_bias=True)
    proj, cell = layer.projection, layer.cell
    inputs, n = SHAPES[2]
    u, h = torch.randn(3, inputs, device=DEVICE), torch.randn(3, n, device=DEVICE)
    with pytest.raises(ValueError, match=r"weight must be a \(heads, 3, 10 / heads, inputs / heads\)"):
        decode_step.gru_projected_step(u, proj.weight[:, :2], None, cell, h)
    with pytest.raises(ValueError, match="weight must be a"):
        decode_step.gru_projected_step(u, proj.weight.flatten(0, 1), None, cell, h)
    with pytest.raises(ValueError, match=r"weight must be a contiguous tensor .*\(not contiguous\)"):
        decode_step.gru_projected_step(u, proj.weight.transpose(2, 3).contiguous().transpose(2, 3),
                                       None, cell, h)
    with pytest.raises(ValueError, match=r"u must be a contiguous tensor of shape \(3, 10\)"):
        decode_step.gru_projected_step(u[:, :-1], proj.weight, None, cell, h)
    with pytest.raises(ValueError, match=r"projection bias must be a contiguous tensor of shape \(30,\)"):
        decode_step.gru_projected_step(u, proj.weight, proj.bias[:-1], cell, h)
    with pytest.raises(ValueError, match=r"c must be a contiguous tensor of shape \(3, 10\)"):
        lstm = _layer("lstm", 2)
        decode_step.lstm_projected_step(u, lstm.projection.weight, None, lstm.cell, h, h[:2])
