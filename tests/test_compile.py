"""torch.compile(fullgraph=True) traces the layers on the PyTorch path without graph
breaks: the safe default decides its fallback inside the graph (torch.cond), and the
compiled layer matches eager. ``aot_eager`` checks tracing and functionalisation without
spending CI time on code generation."""

import pytest
import torch

import pararnn


def big_weight_gru(scale):
    gru = pararnn.ParaGRU(8, 16, num_heads=2, mode="parallel")
    with torch.no_grad():
        gru.cell.a.mul_(scale)
        gru.projection.weight.mul_(scale)
    return gru


@pytest.mark.parametrize("scale, falls_back", [(1.0, False), (8.0, True)])
def test_compiled_inference_matches_eager(scale, falls_back):
    gru = big_weight_gru(scale)
    x = torch.randn(2, 16, 8)
    torch._dynamo.reset()
    compiled = torch.compile(gru, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        ref, ref_n = gru(x)
        assert gru.last_solve.fell_back is falls_back
        out, h_n = compiled(x)
        assert gru.last_solve.fell_back is falls_back
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h_n, ref_n, rtol=1e-6, atol=1e-6)


def test_compiled_sequential_training_matches_eager():
    gru = pararnn.ParaGRU(8, 16, num_heads=2, mode="sequential")
    x = torch.randn(2, 12, 8)
    grads = []
    torch._dynamo.reset()
    for layer in (gru, torch.compile(gru, fullgraph=True, backend="aot_eager")):
        gru.zero_grad()
        out, h_n = layer(x)
        (out.sin().sum() + h_n.square().sum()).backward()
        grads.append([out.detach(), *(p.grad.clone() for p in gru.parameters())])
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [2, 64])  # auto's Newton, then its step loop
@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_default_auto_mode_compiles_in_one_graph(layer_cls, batch):
    """mode="auto" (the default) reads torch's thread count to choose: a constant of the
    graph (its call broke fullgraph=True), and the compiled layer matches eager."""
    layer = layer_cls(4, 8)
    x = torch.randn(batch, 6, 4)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)[0], layer(x)[0], rtol=1e-6, atol=1e-6)
