"""The fused single-token decode steps against the cells' own ``step`` and the convolution's
formula (float64 on the CPU)."""

import pytest
import torch

pytest.importorskip("triton")

from pararnn.cells import ParaGRUCell, ParaLSTMCell  # noqa: E402
from pararnn.kernels import decode_step  # noqa: E402
from pararnn.kernels import interpreter_enabled  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
if not CUDA and not interpreter_enabled():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)


def _cell(kind, n, clip, bias):
    cell = (ParaGRUCell if kind == "gru" else ParaLSTMCell)(n, recurrent_clip=clip, bias=bias)
    with torch.no_grad():
        for p in cell.parameters():
            p.normal_(0.0, 1.0)  # beyond the clip, so that clipping matters
    return cell.to(DEVICE)


def _reference(kind, cell, pre, states):
    cell64 = cell.double()
    pre, states = pre.double(), [s.double() for s in states]
    try:
        if kind == "gru":
            return [cell64.step(pre, states[0])]
        return list(ParaLSTMCell.unpack_state(cell64.step(pre, ParaLSTMCell.pack_state(*states))))
    finally:
        cell.float()


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("n,clip,bias", [(8, 0.5, True), (37, None, False), (1500, 0.5, True)])
@pytest.mark.parametrize("pre_dtype", [torch.float32, torch.bfloat16])
def test_fused_step_equals_cell_step(kind, n, clip, bias, pre_dtype):
    torch.manual_seed(n)
    cell = _cell(kind, n, clip, bias)
    batch = 3
    pre = torch.randn(batch, 3 * n, device=DEVICE).to(pre_dtype)
    states = [torch.randn(batch, n, device=DEVICE) for _ in range(1 if kind == "gru" else 2)]
    expected = _reference(kind, cell, pre.float(), states)
    if kind == "gru":
        got = [decode_step.gru_step(pre, cell, states[0])]
    else:
        got = list(decode_step.lstm_step(pre, cell, *states))
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), e, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_fused_step_in_place(kind):
    """Writing the new state over the old one gives the same result as a fresh output."""
    cell = _cell(kind, 40, 0.5, True)
    pre = torch.randn(2, 120, device=DEVICE)
    states = [torch.randn(2, 40, device=DEVICE) for _ in range(1 if kind == "gru" else 2)]
    if kind == "gru":
        fresh = [decode_step.gru_step(pre, cell, states[0])]
        decode_step.gru_step(pre, cell, states[0], out=states[0])
    else:
        fresh = list(decode_step.lstm_step(pre, cell, *states))
        decode_step.lstm_step(pre, cell, *states, out=tuple(states))
    for f, s in zip(fresh, states):
        assert torch.equal(f, s)


@pytest.mark.skipif(not CUDA, reason="tracing runs the launcher on fake tensors, which Triton's interpreter cannot")
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_fused_step_compiles_in_one_graph(kind):
    """The kernel is a custom operator: ``torch.compile(fullgraph=True)`` (inductor) traces
    an in-place step and the work around it, and computes what the eager call does."""
    cell = _cell(kind, 40, 0.5, True)
    pre = torch.randn(2, 120, device=DEVICE)
    states = [torch.randn(2, 40, device=DEVICE) for _ in range(1 if kind == "gru" else 2)]
    if kind == "gru":
        expected = [decode_step.gru_step(pre, cell, states[0])]
    else:
        expected = list(decode_step.lstm_step(pre, cell, *states))

    def step(pre, *states):
        if kind == "gru":
            decode_step.gru_step(2 * pre, cell, states[0], out=states[0])
        else:
            decode_step.lstm_step(2 * pre, cell, *states, out=states)
        return states[0] + 1

    with torch.no_grad():
        y = torch.compile(step, fullgraph=True)(pre / 2, *states)
    for e, s in zip(expected, states):
        torch.testing.assert_close(s, e, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(y, expected[0] + 1, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("k,channels", [(4, 40), (2, 1500), (3, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_step_equals_the_formula(k, channels, dtype, silu):
    """Output ``bias + sum_j w_j window_j + w_{k-1} x`` (with ``silu``: its SiLU) and the
    window shifted by one, with ``x`` a strided slice (the convolution reads a chunk of a
    projection)."""
    torch.manual_seed(k)
    batch = 3
    weight, bias = torch.randn(channels, 1, k, device=DEVICE), torch.randn(channels, device=DEVICE)
    x = torch.randn(batch, 2 * channels, device=DEVICE).to(dtype)[:, :channels]
    window = torch.randn(batch, channels, k - 1, device=DEVICE).to(dtype)
    full = torch.cat([window.double(), x.double()[:, :, None]], dim=2)
    expected = (full * weight[:, 0].double()).sum(-1) + bias.double()
    if silu:
        expected = torch.nn.functional.silu(expected)
    y = decode_step.conv_step(x, window, weight, bias, silu=silu)
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), expected, atol=1e-5 if dtype == torch.float32 else 2e-2,
                               rtol=1e-5 if dtype == torch.float32 else 1e-2)
    assert torch.equal(window, full[:, :, 1:].to(dtype))


@pytest.mark.parametrize("silu", [False, True])
def test_conv_step_of_width_one_keeps_no_window(silu):
    """Kernel width 1 (``conv_kernel=1``): ``y = bias + w x`` and the empty window writes
    nothing (it stored ``x`` one entry before the window: out of bounds). The window is an
    empty view inside a guard buffer, which must come out unchanged."""
    torch.manual_seed(0)
    batch, channels = 3, 5
    weight, bias = torch.randn(channels, 1, 1, device=DEVICE), torch.randn(channels, device=DEVICE)
    x = torch.randn(batch, channels, device=DEVICE)
    guard = torch.randn(16, device=DEVICE)
    before = guard.clone()
    window = guard[8:8].view(batch, channels, 0)
    y = decode_step.conv_step(x, window, weight, bias, silu=silu)
    expected = x * weight[:, 0, 0] + bias
    torch.testing.assert_close(y, torch.nn.functional.silu(expected) if silu else expected)
    assert torch.equal(guard, before)


def test_bad_shapes():
    cell = _cell("gru", 8, 0.5, True)
    with pytest.raises(ValueError, match="pre must be a contiguous tensor of shape"):
        decode_step.gru_step(torch.randn(2, 25, device=DEVICE), cell, torch.randn(2, 8, device=DEVICE))
    with pytest.raises(ValueError, match="not contiguous"):
        decode_step.gru_step(torch.randn(2, 24, device=DEVICE), cell, torch.randn(8, 2, device=DEVICE).t())
    with pytest.raises(ValueError, match="window must be a contiguous tensor of shape"):
        decode_step.conv_step(torch.randn(2, 8, device=DEVICE), torch.zeros(2, 8, 2, device=DEVICE),
                              torch.randn(8, 1, 4, device=DEVICE), torch.randn(8, device=DEVICE))
