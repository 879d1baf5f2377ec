"""Head-major pre-activations (``pararnn.layout``): the fused kernels read them in place
and write their gradient in the same layout, with the numbers of the gate-major call;
the layers hand them over and match the PyTorch path; the solver's other paths copy."""

import pytest
import torch

pytest.importorskip("triton")

from pararnn import ParaGRU, ParaLSTM, solve  # noqa: E402
from pararnn.cells import ParaGRUCell  # noqa: E402
from pararnn.kernels import interpreter_enabled, paragru, paralstm  # noqa: E402
from pararnn.layers.projection import MultiHeadProjection  # noqa: E402
from pararnn.layout import HeadMajor, gate_major, head_major  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
if not CUDA and not interpreter_enabled():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

HEADS, N = 2, 32  # 16 channels per head


def test_layouts_place_each_channel_of_each_gate_in_its_head():
    pre = torch.arange(2 * 3 * 3 * N, dtype=torch.float64).view(2, 3, 3 * N)
    data = head_major(pre, HEADS, 3)
    per_head = N // HEADS
    for h, g, j in ((0, 0, 0), (1, 2, 5), (1, 1, per_head - 1)):
        assert torch.equal(data[h, :, :, g * per_head + j], pre[:, :, g * N + h * per_head + j])
    assert torch.equal(gate_major(data, 3), pre)


def _cell_args(kernels, n):
    torch.manual_seed(1)
    a = (torch.randn(3, n) * 0.6).to(DEVICE)
    extra = (torch.randn(2, n).mul(0.3).to(DEVICE),) if kernels is paralstm else ()
    return a, extra, torch.randn(3, n).mul(0.3).to(DEVICE)


# 11 steps: two step blocks of 4 and a masked one; SEGMENTS cuts 4, 4 and 3 steps
ONE_WALK, SEGMENTS = dict(seg_len=None), dict(seg_len=4, warmup=2)


# block_n 16 tiles each head (read in place); 32 straddles two heads (copied to gate-major)
@pytest.mark.parametrize("kernels,block_n,plan,dtype", [
    (paragru, 16, SEGMENTS, torch.float32), (paragru, 16, ONE_WALK, torch.bfloat16),
    (paragru, 32, SEGMENTS, torch.float32), (paralstm, 16, SEGMENTS, torch.bfloat16),
    (paralstm, 16, ONE_WALK, torch.float32), (paralstm, 32, ONE_WALK, torch.float32)])
def test_kernels_read_and_write_head_major_as_the_gate_major_call(kernels, block_n, plan, dtype):
    a, extra, bias = _cell_args(kernels, N)
    pre = torch.randn(2, 11, 3 * N).to(DEVICE, dtype)
    h0 = torch.randn(2, (2 if kernels is paralstm else 1) * N).to(DEVICE)
    resets = (torch.rand(2, 11) < 0.2).to(DEVICE)
    data = head_major(pre, HEADS, 3)
    # one boundary round (the segmented plan's walk, boundary solve and correction walk each
    # read head-major once; more rounds repeat the same launches)
    states, _ = kernels.forward(pre, a, *extra, h0, resets, 1, bias=bias, block_n=block_n, **plan)
    got, _ = kernels.forward(data, a, *extra, h0, resets, 1, bias=bias, block_n=block_n, **plan)
    assert torch.equal(got, states)
    grad = torch.randn_like(states)
    want = kernels.backward(pre, a, *extra, h0, resets, states, grad, bias=bias, block_n=block_n, **plan)
    have = kernels.backward(data, a, *extra, h0, resets, states, grad, bias=bias, block_n=block_n, **plan)
    assert have[0].shape == data.shape and have[0].dtype == dtype
    assert torch.equal(have[0], head_major(want[0], HEADS, 3))
    for g, w in zip(have[1:], want[1:]):
        assert torch.equal(g, w)


@pytest.mark.parametrize("layer_class", [ParaGRU, ParaLSTM])
def test_layer_hands_head_major_input_to_the_kernels_and_matches_pytorch(layer_class):
    torch.manual_seed(0)
    layer = layer_class(32, N, num_heads=HEADS, backend="triton").to(DEVICE)
    reference = layer_class(32, N, num_heads=HEADS, backend="torch").to(DEVICE)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 11, 32, device=DEVICE, requires_grad=True)
    # the PyTorch path reads gate-major; training on the CPU, the layer hands it head-major
    # too (the C loop reads it in place where it runs, the solver copies it elsewhere)
    assert layer._head_major(x) and reference._head_major(x) == (DEVICE.type == "cpu")
    y, _ = layer(x)
    assert layer.last_solve.backend == "triton-fused"
    want, _ = reference(x)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *layer.parameters()], grad)
    expected = torch.autograd.grad(want, [x, *reference.parameters()], grad)
    for g, w in zip(got, expected):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options,shape", [
    (dict(batch_first=False), (5, 3, 32)), (dict(num_heads=1), (3, 5, 32)),
    (dict(backend="torch"), (3, 5, 32)), ({}, (5, 32))])
def test_layer_keeps_gate_major_where_the_kernels_do_not_read_head_major(options, shape):
    """Inference (no CPU training loop to hand it to either)."""
    options = {"num_heads": HEADS, "backend": "triton", **options}
    layer = ParaGRU(32, N, **options).to(DEVICE)
    x = torch.randn(*shape, device=DEVICE)
    with torch.no_grad():
        assert not layer._head_major(x)
        assert layer(x)[0].shape == shape[:-1] + (N,)


def test_projection_head_major_is_the_gate_major_projection_with_its_gradients():
    torch.manual_seed(0)
    projection = MultiHeadProjection(24, 12, 3, num_heads=4, bias=False).double()
    x = torch.randn(2, 5, 24, dtype=torch.float64, requires_grad=True)
    held = projection.head_major(x)
    assert isinstance(held, HeadMajor) and held.shape == (2, 5, 36) and held.data.shape == (4, 2, 5, 9)
    want = projection(x)
    torch.testing.assert_close(held.gate_major(), want, rtol=0, atol=1e-12)
    grad = torch.randn(4, 2, 5, 9, dtype=torch.float64)
    got = torch.autograd.grad(held.data, [x, projection.weight], grad)
    expected = torch.autograd.grad(want, [x, projection.weight], gate_major(grad, 3))
    for g, w in zip(got, expected):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


def test_projection_head_major_rejects_a_bias_and_other_shapes():
    with pytest.raises(ValueError, match="without bias"):
        MultiHeadProjection(8, 8, 3, num_heads=2).head_major(torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        MultiHeadProjection(8, 8, 3, num_heads=2, bias=False).head_major(torch.randn(2, 8))
    with pytest.raises(ValueError, match="head-major"):
        HeadMajor(torch.randn(2, 3, 8), 3)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_solve_takes_head_major_input_on_every_path(backend):
    """The fused path reads it in place; the PyTorch path (and the sequential loop) copy it
    to gate-major: the same states and gradients as the gate-major call."""
    torch.manual_seed(0)
    cell = ParaGRUCell(N).to(DEVICE)
    pre = torch.randn(2, 11, 3 * N, device=DEVICE)
    data = head_major(pre, HEADS, 3).requires_grad_()
    flat = pre.clone().requires_grad_()
    for mode in ("parallel", "sequential"):
        got, _, _ = solve(cell, HeadMajor(data, 3), mode=mode, backend=backend)
        want, _, _ = solve(cell, flat, mode=mode, backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        grad = torch.randn_like(got)
        (g_data,) = torch.autograd.grad(got, [data], grad)
        (g_flat,) = torch.autograd.grad(want, [flat], grad)
        torch.testing.assert_close(g_data, head_major(g_flat, HEADS, 3), rtol=1e-5, atol=1e-6)
