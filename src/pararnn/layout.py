"""Layouts of a gated cell's pre-activations ``(B, T, G N)``: gate-major and head-major.

Gate-major is what the cells read: ``[u_0 | u_1 | ... | u_{G-1}]``, each gate's ``N``
channels in order. A multi-head input projection computes one batched GEMM over heads,
whose output is head-major: ``(H, B, T, G N/H)``, head ``h`` holding its ``N/H`` channels
of every gate. Getting from one to the other is a copy of the whole tensor (forward, and
again for the gradient backward), so the fused kernels read head-major pre-activations in
place and write their gradient in the same layout; :class:`HeadMajor` carries them to the
solver, which copies to gate-major only for the paths that need it.
"""

from __future__ import annotations

import torch


def gate_major(pre: torch.Tensor, gates: int) -> torch.Tensor:
    """Head-major ``(H, B, T, G NH)`` pre-activations as gate-major ``(B, T, G H NH)`` (a copy)."""
    heads, batch, steps, width = pre.shape
    per_head = width // gates
    return (pre.view(heads, batch, steps, gates, per_head).permute(1, 2, 3, 0, 4)
            .reshape(batch, steps, gates * heads * per_head))


def head_major(pre: torch.Tensor, heads: int, gates: int) -> torch.Tensor:
    """The inverse of :func:`gate_major`: ``(B, T, G N)`` -> ``(H, B, T, G N/H)`` (a copy)."""
    batch, steps, width = pre.shape
    per_head = width // (gates * heads)
    return (pre.view(batch, steps, gates, heads, per_head).permute(3, 0, 1, 2, 4)
            .reshape(heads, batch, steps, gates * per_head))


class HeadMajor:
    """Pre-activations ``(B, T, G N)`` held head-major as ``data`` ``(H, B, T, G N/H)``.

    What :meth:`pararnn.layers.projection.MultiHeadProjection.head_major` returns and
    :func:`pararnn.solve` takes in place of ``x``: the cells' fused kernels read ``data``
    as it is; every other path takes :meth:`gate_major`. Shape, dtype, device and
    ``requires_grad`` describe the gate-major tensor, for the solver's checks.
    """

    __slots__ = ("data", "gates")

    def __init__(self, data: torch.Tensor, gates: int) -> None:
        if data.dim() != 4 or data.shape[-1] % gates:
            raise ValueError(f"head-major pre-activations must be (H, B, T, {gates} N/H), "
                             f"got shape {tuple(data.shape)}")
        self.data, self.gates = data, gates

    @property
    def shape(self) -> torch.Size:
        heads, batch, steps, width = self.data.shape
        return torch.Size((batch, steps, heads * width))

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def requires_grad(self) -> bool:
        return self.data.requires_grad

    def dim(self) -> int:
        return 3

    def gate_major(self) -> torch.Tensor:
        """The gate-major ``(B, T, G N)`` tensor (a copy, differentiable)."""
        return gate_major(self.data, self.gates)
