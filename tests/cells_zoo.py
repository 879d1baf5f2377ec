"""User-written cells of every Jacobian structure, used across the tests."""

from __future__ import annotations

import torch
from torch import nn

import pararnn

# Newton options that iterate to float64 precision and fail loudly otherwise.
CONVERGED = dict(max_iters=60, tol=1e-12, on_failure="raise")


class ElmanCell(pararnn.Cell):
    """Dense Jacobian: h' = tanh(W h + U x + b)."""

    jacobian = "dense"

    def __init__(self, input_size=3, state_size=5, scale=0.6, dtype=torch.float64):
        super().__init__()
        self.input_size, self.state_size = input_size, state_size
        self.w = nn.Parameter(torch.randn(state_size, state_size, dtype=dtype) * scale / state_size**0.5)
        self.u = nn.Parameter(torch.randn(state_size, input_size, dtype=dtype) / input_size**0.5)
        self.b = nn.Parameter(torch.randn(state_size, dtype=dtype) * 0.1)

    def step(self, x, h_prev):
        return torch.tanh(h_prev @ self.w.T + x @ self.u.T + self.b)


class DiagonalCell(pararnn.Cell):
    """Diagonal Jacobian: h' = tanh(a ⊙ h + U x) + 0.1 h."""

    jacobian = "diagonal"

    def __init__(self, input_size=3, state_size=6, dtype=torch.float64):
        super().__init__()
        self.input_size, self.state_size = input_size, state_size
        self.a = nn.Parameter(torch.rand(state_size, dtype=dtype) * 1.2 - 0.6)
        self.u = nn.Parameter(torch.randn(state_size, input_size, dtype=dtype) / input_size**0.5)

    def step(self, x, h_prev):
        return torch.tanh(self.a * h_prev + x @ self.u.T) + 0.1 * h_prev


class BlockCell(pararnn.Cell):
    """k x k block-diagonal Jacobian: each block of k entries mixes through its own matrix."""

    jacobian = "block"

    def __init__(self, input_size=3, blocks=4, block_size=2, dtype=torch.float64):
        super().__init__()
        self.block_size = block_size
        self.input_size, self.state_size = input_size, blocks * block_size
        self.m = nn.Parameter(torch.randn(blocks, block_size, block_size, dtype=dtype) * 0.5 / block_size**0.5)
        self.u = nn.Parameter(torch.randn(self.state_size, input_size, dtype=dtype) / input_size**0.5)

    def step(self, x, h_prev):
        blocks = h_prev.unflatten(-1, (-1, self.block_size))
        mixed = (self.m * blocks.unsqueeze(-2)).sum(-1).flatten(-2)
        return torch.tanh(mixed + x @ self.u.T)


class LogisticMapCell(pararnn.Cell):
    """Chaotic for r ≈ 3.9: Newton with few iterations cannot converge on long sequences."""

    jacobian = "diagonal"

    def __init__(self, r=3.9, state_size=4, dtype=torch.float64):
        super().__init__()
        self.input_size, self.state_size = 1, state_size
        self.r = r
        self.scale = nn.Parameter(torch.ones(state_size, dtype=dtype))

    def step(self, x, h_prev):
        return self.r * h_prev * (1 - h_prev) * self.scale + 1e-3 * x


def user_cells(dtype=torch.float64):
    """One user cell of each structure (fresh parameters each call)."""
    return {
        "dense": ElmanCell(dtype=dtype),
        "diagonal": DiagonalCell(dtype=dtype),
        "block2": BlockCell(block_size=2, dtype=dtype),
        "block3": BlockCell(block_size=3, blocks=2, dtype=dtype),
    }


def reference_cells(dtype=torch.float64):
    return {
        "paragru": pararnn.ParaGRUCell(6, dtype=dtype),
        "paralstm": pararnn.ParaLSTMCell(5, dtype=dtype),
    }


def all_cells(dtype=torch.float64):
    return {**user_cells(dtype), **reference_cells(dtype)}


class ExpandingTanhCell(pararnn.Cell):
    """h' = tanh(gain * h + x): for gain > 1 and small inputs the Jacobian products grow
    like gain^T near h = 0, so Newton from the initial guess overflows (gain 3: NaN within
    100 steps) or lands far off (gain 1.5: states off by ~1e8), while the loop is fine."""

    jacobian = "diagonal"

    def __init__(self, state_size=4, gain=3.0, dtype=torch.float32):
        super().__init__()
        self.input_size = self.state_size = state_size
        self.gain = nn.Parameter(torch.full((state_size,), gain, dtype=dtype))

    def step(self, x, h_prev):
        return torch.tanh(self.gain * h_prev + x)


class MisdeclaredCell(pararnn.Cell):
    """Declares a diagonal Jacobian but mixes the state through a dense matrix."""

    jacobian = "diagonal"

    def __init__(self, state_size=8, dtype=torch.float32):
        super().__init__()
        self.input_size = self.state_size = state_size
        self.w = nn.Parameter(torch.randn(state_size, state_size, dtype=dtype) * 1.5 / state_size**0.5)

    def step(self, x, h_prev):
        return torch.tanh(h_prev @ self.w.T + x)


def diverging_paragru_cell(dtype=torch.float64):
    """A ParaGRU cell without recurrent_clip whose large recurrent weights make Newton
    diverge on :func:`diverging_paragru_inputs` (3 iterations land ~1e7 off)."""
    cell = pararnn.ParaGRUCell(4, dtype=dtype)
    with torch.no_grad():
        spread = torch.linspace(0.7, 1.3, 4, dtype=dtype)
        cell.a.copy_(torch.tensor([[-3.0], [3.0], [-8.0]], dtype=dtype) * spread)
        cell.bias.zero_()
    return cell


def diverging_paragru_inputs(steps=300, dtype=torch.float64):
    """Deterministic pre-activations (1, steps, 12): sinusoids of amplitude 2."""
    t = torch.arange(steps, dtype=dtype)
    return 2 * torch.stack([torch.sin(0.37 * t * (k + 1) + k) for k in range(12)], -1).unsqueeze(0)


class RowCoupledCell(pararnn.Cell):
    """Declares a diagonal Jacobian, but the last input feature switches on a dense coupling
    of the state: diagonal wherever that feature is 0 (a row the first probe reads, say)."""

    jacobian = "diagonal"

    def __init__(self, state_size=8, dtype=torch.float32):
        super().__init__()
        self.state_size, self.input_size = state_size, state_size + 1
        self.a = nn.Parameter(torch.full((state_size,), 0.5, dtype=dtype))
        self.w = nn.Parameter(torch.randn(state_size, state_size, dtype=dtype) * 2 / state_size**0.5)

    def step(self, x, h_prev):
        return torch.tanh(self.a * h_prev + x[..., :-1] + x[..., -1:] * (h_prev @ self.w.T))
