"""Block-diagonal ("multi-head") input projection computed for all steps before the solve."""

from __future__ import annotations

import math

import torch
from torch import nn


class MultiHeadProjection(nn.Module):
    """``x (…, D) -> (…, gates * N)`` with one block-diagonal matrix per gate.

    Head ``h`` maps input features ``[h D/H, (h+1) D/H)`` to channels
    ``[h N/H, (h+1) N/H)`` of every gate. The output is gate-major: all channels of
    gate 0, then gate 1, ... as the reference cells expect. ``num_heads=1`` is a plain
    dense projection. Weights are Kaiming-uniform (variance 1 / fan-in), biases zero.
    """

    def __init__(self, input_size: int, hidden_size: int, num_gates: int, *, num_heads: int = 1,
                 bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if input_size % num_heads or hidden_size % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide input_size={input_size} and hidden_size={hidden_size}"
            )
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_gates, self.num_heads = num_gates, num_heads
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(
            num_heads, num_gates, hidden_size // num_heads, input_size // num_heads, **factory))
        self.bias = nn.Parameter(torch.empty(num_gates * hidden_size, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = math.sqrt(3.0 / self.weight.shape[-1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_heads == 1:
            out = nn.functional.linear(x, self.weight.flatten(0, 2), self.bias)
            return out
        heads = x.unflatten(-1, (self.num_heads, -1))  # (..., H, D/H)
        out = torch.einsum("...hd,hgnd->...ghn", heads, self.weight).flatten(-3)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return (f"{self.input_size} -> {self.num_gates} x {self.hidden_size}, "
                f"num_heads={self.num_heads}, bias={self.bias is not None}")
