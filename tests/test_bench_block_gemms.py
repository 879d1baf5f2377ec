"""benchmarks/gpu_block_gemms.py on the CPU: the blocks' weights it times, and that its three
products per weight are the forward and the two backward products autograd computes."""

import pytest
import torch

from benchmark_scripts import load_benchmark


def test_the_blocks_weights_are_their_matrix_products():
    bench = load_benchmark("gpu_block_gemms")
    transformer = dict(bench.block_weights("transformer", "tiny", "standard"))
    paragru = dict(bench.block_weights("paragru", "tiny", "tuned"))
    assert set(transformer) == {"mixer.qkv", "mixer.out_proj", "mlp.gate_up", "mlp.down"}
    assert set(paragru) == {"mixer.in_proj", "mixer.rnn.projection", "mixer.out_proj",
                            "mlp.gate_up", "mlp.down"}
    assert len(paragru["mixer.rnn.projection"]) == 4  # (heads, gates, head_out, head_in)


@pytest.mark.parametrize("shape", [(48, 16), (2, 3, 8, 12)])
def test_products_are_the_forward_and_autograds_backward(shape):
    bench = load_benchmark("gpu_block_gemms")
    p = bench.products(shape, 10, "cpu", dtype=torch.float64)
    x, w, dy = (p[k].clone().requires_grad_(k != "dy") for k in ("x", "w", "dy"))
    if len(shape) == 4:  # the head-major batched product of a block-diagonal weight
        y = torch.einsum("hti,hoi->hto", x, w)
    else:
        y = torch.nn.functional.linear(x, w)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    fns = p["fns"]
    torch.testing.assert_close(fns["fwd"](), y.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fns["dx"](), dx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fns["dw"](), dw, rtol=1e-12, atol=1e-12)
    assert p["flops"] == 2 * 10 * w.numel()
