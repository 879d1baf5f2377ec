"""The solver's Triton paths end to end (fused reference cells, scan kernels for user cells).

On CPU these run through Triton's interpreter (tests/kernels/conftest.py), at small sizes.
"""

import pytest
import torch

import pararnn
from cells_zoo import BlockCell, DiagonalCell

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def gradients(layer, x, state, resets):
    layer.zero_grad()
    x = x.detach().requires_grad_()
    out, final = layer(x, state, resets=resets)
    final = final if isinstance(final, torch.Tensor) else final[0] + final[1]
    (out.sin().sum() + final.square().sum()).backward()
    return out.detach(), [x.grad, *(p.grad for p in layer.parameters())]


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_fused_layer_matches_torch_backend(layer_cls):
    torch.manual_seed(0)
    layer = layer_cls(6, 12, num_heads=2, recurrent_clip=0.5, device=DEVICE)
    with torch.no_grad():
        layer.cell.bias.normal_(0.0, 0.5)  # zero at init: make the fused bias path count
    x = torch.randn(2, 21, 6, device=DEVICE)  # one walk: five step blocks and a masked step
    h0 = torch.randn(2, 12, device=DEVICE) * 0.5
    state = h0 if layer_cls is pararnn.ParaGRU else (h0, -h0)
    resets = torch.zeros(2, 21, dtype=torch.bool, device=DEVICE)
    resets[0, 9] = resets[1, 18] = True

    layer.backend, layer.mode = "torch", "sequential"
    ref_out, ref_grads = gradients(layer, x, state, resets)
    layer.backend, layer.mode = "triton", "parallel"
    out, grads = gradients(layer, x, state, resets)
    assert layer.last_solve.backend == "triton-fused"
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_fused_sequential_inference_and_tol_check():
    torch.manual_seed(1)
    gru = pararnn.ParaGRU(4, 8, device=DEVICE, backend="triton",
                          newton=pararnn.NewtonConfig(tol=1e-5, on_failure="raise"))
    x = torch.randn(3, 21, 4, device=DEVICE)
    with torch.no_grad():
        gru.mode = "sequential"
        seq, h_seq = gru(x)
        assert gru.last_solve.backend == "triton-fused" and gru.last_solve.mode == "sequential"
        gru.mode = "parallel"
        par, h_par = gru(x)
        assert gru.last_solve.converged and float(gru.last_solve.residual) <= 1e-5
    torch.testing.assert_close(par, seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_par, h_seq, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell_fn", [lambda: DiagonalCell(dtype=torch.float32),
                                     lambda: BlockCell(block_size=2, dtype=torch.float32)])
def test_user_cells_use_the_triton_scan(cell_fn):
    torch.manual_seed(2)
    cell = cell_fn().to(DEVICE)
    x = torch.randn(2, 19, cell.input_size, device=DEVICE)
    ref, _ = pararnn.RNN(cell, mode="sequential")(x)
    rnn = pararnn.RNN(cell, mode="parallel", backend="triton",
                      newton=pararnn.NewtonConfig(max_iters=20, tol=1e-6, on_failure="raise"))
    xg = x.clone().requires_grad_()
    out, _ = rnn(xg)
    assert rnn.last_solve.backend == "triton"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    xr = x.clone().requires_grad_()
    pararnn.RNN(cell, mode="sequential")(xr)[0].sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_float64_never_goes_to_triton_silently():
    gru = pararnn.ParaGRU(4, 8, dtype=torch.float64, device=DEVICE)
    gru(torch.randn(1, 5, 4, dtype=torch.float64, device=DEVICE))
    assert gru.last_solve.backend == "torch"


def test_fused_double_backward_raises():
    gru = pararnn.ParaGRU(4, 8, device=DEVICE, backend="triton", mode="parallel")
    x = torch.randn(1, 5, 4, device=DEVICE, requires_grad=True)
    out, _ = gru(x)
    assert gru.last_solve.backend == "triton-fused"
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_packed_documents_take_the_fused_kernels(layer_cls, monkeypatch):
    """cu_seqlens without initial states: the documents restart from zeros, which the
    kernels do as resets. Short segments put document starts inside and at the edges of
    the segments that the boundary rounds join."""
    from pararnn.kernels import _fused_common
    monkeypatch.setattr(_fused_common, "MIN_SEG_LEN", 8)
    monkeypatch.setattr(_fused_common, "CHAINS_PER_SM", 1 << 20)
    torch.manual_seed(2)
    layer = layer_cls(6, 12, num_heads=2, recurrent_clip=0.5, device=DEVICE)
    with torch.no_grad():
        layer.cell.bias.normal_(0.0, 0.5)
    # 3 segments of 8 steps; documents start inside the first, at the second's edge and
    # inside the third
    x = torch.randn(1, 24, 6, device=DEVICE)
    cu = torch.tensor([0, 5, 8, 19, 24], device=DEVICE)

    def run(backend, mode, h0=None):
        layer.backend, layer.mode = backend, mode
        layer.zero_grad()
        xg = x.clone().requires_grad_()
        out, final = layer(xg, h0, cu_seqlens=cu)
        final = final if isinstance(final, torch.Tensor) else final[0] + final[1]
        (out.sin().sum() + final.square().sum()).backward()
        return [out.detach(), final.detach(), xg.grad, *(p.grad for p in layer.parameters())]

    want = run("torch", "sequential")
    got = run("triton", "parallel")
    assert layer.last_solve.backend == "triton-fused" and layer.last_solve.segments == 3
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    # one initial state per document is not in the kernels' interface: the generic path
    h0 = torch.zeros(4, 12, device=DEVICE)
    state = h0 if layer_cls is pararnn.ParaGRU else (h0, h0)
    run("triton", "parallel", state)
    assert layer.last_solve.backend != "triton-fused"


def test_reset_words_are_packed_once_per_unchanged_tensor():
    """The layers of a model get the same resets: packed once per block length while the
    tensor is unchanged, again after an in-place write, every time for inference tensors
    (no version counter)."""
    from pararnn.kernels._fused_common import _pack_resets, pack_resets
    resets = torch.rand(2, 37, device=DEVICE) < 0.2
    words = pack_resets(resets, 4)
    assert pack_resets(resets, 4) is words and torch.equal(words, _pack_resets(resets, 4))
    assert torch.equal(pack_resets(resets, 8), _pack_resets(resets, 8))
    assert pack_resets(resets, 4) is words  # one entry per block length
    resets[1, 5] = ~resets[1, 5]
    changed = pack_resets(resets, 4)
    assert changed is not words and torch.equal(changed, _pack_resets(resets, 4))
    assert not torch.equal(changed, words)
    assert pack_resets(resets.clone(), 4) is not changed
    with torch.inference_mode():
        frozen = torch.rand(2, 37, device=DEVICE) < 0.2
        assert pack_resets(frozen, 4) is not pack_resets(frozen, 4)


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_packed_call_builds_starts_and_reset_words_once(layer_cls):
    """cu_seqlens reused (every layer of a model, every step of a loop): its step starts and
    their reset words are built by the first call only."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    layer = layer_cls(6, 12, num_heads=2, backend="triton", device=DEVICE)
    x = torch.randn(1, 40, 6, device=DEVICE)
    cu = torch.tensor([0, 8, 13, 29, 40], device=DEVICE)
    with Ops() as first:
        want = layer(x, cu_seqlens=cu)[0]
    with Ops() as again:
        got = layer(x, cu_seqlens=cu)[0]
    assert layer.last_solve.backend == "triton-fused" and torch.equal(got, want)
    assert {"index_put_", "pow"} <= set(first.names)  # the starts and the words, built
    assert not {"index_put_", "pow"} & set(again.names), again.names


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_fused_layers_clamp_the_recurrent_weights_in_the_kernels(layer_cls):
    """recurrent_clip costs no op of its own on the fused path, forward or backward (the
    gradients through the clamp: test_fused_layer_matches_torch_backend)."""
    layer = layer_cls(6, 12, num_heads=2, recurrent_clip=0.5, backend="triton", device=DEVICE)
    x = torch.randn(2, 9, 6, device=DEVICE, requires_grad=True)
    with torch.profiler.profile() as prof:
        out, _ = layer(x)
        out.sum().backward()
    assert layer.last_solve.backend == "triton-fused"
    ops = {event.name for event in prof.events()}
    assert not {op for op in ops if "clamp" in op}, sorted(ops)


@pytest.mark.parametrize("final_state_in_loss", [False, True])
def test_fused_paralstm_layer_outputs_h_of_its_own(monkeypatch, final_state_in_loss):
    """The layer's output is h as the forward walk wrote it (contiguous, not a stride-2
    view of all the states), and a loss on it alone hands the backward kernel h's gradient
    as it is, (B, T, N); the final state's gradient, when used, is added into all the
    states' (the values: test_fused_layer_matches_torch_backend)."""
    from pararnn.kernels import paralstm

    seen = []
    backward_parts = paralstm._backward_parts

    def recording(*args, **kwargs):
        seen.append(tuple(args[6].shape))  # grad_H
        return backward_parts(*args, **kwargs)

    monkeypatch.setattr(paralstm, "_backward_parts", recording)
    layer = pararnn.ParaLSTM(6, 12, num_heads=2, recurrent_clip=0.5, backend="triton",
                             device=DEVICE)
    x = torch.randn(2, 9, 6, device=DEVICE, requires_grad=True)
    out, (h_n, c_n) = layer(x)
    assert layer.last_solve.backend == "triton-fused"
    assert out.is_contiguous() and out.shape == (2, 9, 12)
    loss = out.sin().sum() + (c_n.square().sum() if final_state_in_loss else 0.0)
    loss.backward()
    assert seen == [(2, 9, 24) if final_state_in_loss else (2, 9, 12)]


@pytest.mark.parametrize("final_state_in_loss", [False, True])
def test_fused_bf16_paragru_layer_outputs_the_walks_bf16_copy(monkeypatch, final_state_in_loss):
    """A bf16 ParaGRU layer outputs the bf16 copy of the states that the forward walk wrote
    (no cast of the fp32 states after the solve), and a loss on it alone hands the backward
    kernel its gradient in bf16; with the fp32 final state in the loss as well, their sum in
    fp32. The values against the layer in fp32 on the same (bf16) input."""
    from pararnn.kernels import paragru

    seen = []
    backward_parts = paragru._backward_parts

    def recording(*args, **kwargs):
        seen.append(args[5].dtype)  # grad_H
        return backward_parts(*args, **kwargs)

    monkeypatch.setattr(paragru, "_backward_parts", recording)
    torch.manual_seed(0)
    layer = pararnn.ParaGRU(6, 12, num_heads=2, recurrent_clip=0.5, backend="triton",
                            device=DEVICE)
    x = torch.randn(2, 9, 6, device=DEVICE).bfloat16().requires_grad_()
    weights = torch.randn(2, 9, 12, device=DEVICE).bfloat16().float()  # exact in bf16
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        layer.zero_grad()
        xg = x.detach().to(dtype).requires_grad_()
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out, h_n = layer(xg)
        assert layer.last_solve.backend == "triton-fused"
        assert out.dtype == dtype and out.is_contiguous() and h_n.dtype == torch.float32
        loss = (out.float() * weights).sum() + (h_n.square().sum() if final_state_in_loss else 0.0)
        loss.backward()
        results.append([out.float(), h_n, *(p.grad for p in layer.parameters())])
    assert seen[0] == (torch.float32 if final_state_in_loss else torch.bfloat16)
    for got, want in zip(*results):  # the bf16 run's projection is bf16 GEMMs
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
