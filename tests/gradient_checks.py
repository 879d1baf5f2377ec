"""Gradients of one loss through an RNN, shared by the tests that compare a backward
(the parallel adjoint scan, the loop's adjoint) with autograd through the step loop."""

import torch


def loss_gradients(rnn, x, h0, **kwargs):
    """``(out, grads)``: the outputs and d loss / d (x, h0, every cell parameter), with a
    loss that touches every output channel (with distinct weights) and ``h_n``."""
    x = x.detach().requires_grad_()
    h0 = h0.detach().requires_grad_()
    out, h_n = rnn(x, h0, **kwargs)
    weights = torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)
    loss = (out.sin() * weights).sum() + (h_n**2).sum()
    return out, torch.autograd.grad(loss, [x, h0, *rnn.cell.parameters()])


def assert_gradients_close(cell, got, want, *, rtol, atol):
    """Each gradient of :func:`loss_gradients` close, named in the failure message."""
    names = ["x", "h0", *(n for n, _ in cell.named_parameters())]
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=f"gradient of {name}")
