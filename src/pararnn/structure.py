"""Jacobian structures: how a per-step Jacobian ``J_t = ∂f/∂h`` is stored and combined.

Every structure stores the Jacobians of all steps in one tensor with leading
dims ``(...)`` (usually ``(B, T)``) and acts on state vectors of shape ``(..., N)``:

=============  ==========================  ===============================
structure      Jacobian tensor             meaning
=============  ==========================  ===============================
``diagonal``   ``(..., N)``                ``J = diag(d)``
``block k``    ``(..., N // k, k, k)``     consecutive groups of ``k`` state
                                           entries form one ``k x k`` block
``dense``      ``(..., N, N)``             full matrix (``J[i, j] = ∂f_i/∂h_j``)
=============  ==========================  ===============================

The affine maps ``h -> J h + r`` compose associatively, which is what the
parallel scan relies on; this module holds the three operations it needs
(compose, apply, transpose) for each storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_KINDS = ("diagonal", "block", "dense")

# Below this block size a broadcast multiply-and-sum beats a batched matmul of
# tiny matrices by a wide margin on both CPU and GPU.
_SMALL_BLOCK = 4


@dataclass(frozen=True)
class JacobianStructure:
    """The sparsity pattern of a cell's state Jacobian.

    ``kind`` is ``"diagonal"``, ``"block"`` (with ``block_size`` k >= 1) or ``"dense"``.
    """

    kind: str
    block_size: int = 1

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"jacobian must be one of {_KINDS}, got {self.kind!r}")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {self.block_size!r}")
        if self.kind != "block" and self.block_size != 1:
            raise ValueError(f"block_size is only meaningful with jacobian='block', got kind {self.kind!r}")

    # ------------------------------------------------------------------ shapes
    def check_state_size(self, state_size: int) -> None:
        if self.kind == "block" and state_size % self.block_size != 0:
            raise ValueError(
                f"state_size={state_size} is not a multiple of block_size={self.block_size}"
            )

    def jacobian_shape(self, lead: tuple[int, ...], state_size: int) -> tuple[int, ...]:
        """Shape of the Jacobian tensor for states of shape ``lead + (state_size,)``."""
        if self.kind == "diagonal":
            return (*lead, state_size)
        if self.kind == "block":
            k = self.block_size
            return (*lead, state_size // k, k, k)
        return (*lead, state_size, state_size)

    @property
    def jacobian_ndim(self) -> int:
        """How many trailing dims of the Jacobian tensor belong to one step."""
        return {"diagonal": 1, "block": 3, "dense": 2}[self.kind]

    # -------------------------------------------------------------- algebra
    def apply(self, jac: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """``J @ v`` for every leading index; ``vec`` has shape ``(..., N)``."""
        if self.kind == "diagonal":
            return jac * vec
        if self.kind == "block":
            k = self.block_size
            blocks = vec.unflatten(-1, (-1, k))  # (..., n, k)
            if k <= _SMALL_BLOCK:
                out = (jac * blocks.unsqueeze(-2)).sum(-1)
            else:
                out = (jac @ blocks.unsqueeze(-1)).squeeze(-1)
            return out.flatten(-2)
        return (jac @ vec.unsqueeze(-1)).squeeze(-1)

    def compose(self, outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
        """The Jacobian of ``outer ∘ inner``: the matrix product ``outer @ inner``."""
        if self.kind == "diagonal":
            return outer * inner
        if self.kind == "block" and self.block_size <= _SMALL_BLOCK:
            # (..., i, j, 1) * (..., 1, j, l) summed over j
            return (outer.unsqueeze(-1) * inner.unsqueeze(-3)).sum(-2)
        return outer @ inner

    def transpose(self, jac: torch.Tensor) -> torch.Tensor:
        if self.kind == "diagonal":
            return jac
        return jac.transpose(-1, -2)

    def to_dense(self, jac: torch.Tensor) -> torch.Tensor:
        """Expand to full ``(..., N, N)`` matrices (for tests and debugging)."""
        if self.kind == "dense":
            return jac
        if self.kind == "diagonal":
            return torch.diag_embed(jac)
        lead = jac.shape[:-3]
        n, k = jac.shape[-3], self.block_size
        dense = jac.new_zeros(*lead, n, k, n, k)
        idx = torch.arange(n, device=jac.device)
        dense[..., idx, :, idx, :] = jac.movedim(-3, 0)
        return dense.reshape(*lead, n * k, n * k)

    def diagonal(self, jac: torch.Tensor) -> torch.Tensor:
        """The diagonal ``(..., N)`` of the Jacobians (diagonal storage)."""
        if self.kind == "diagonal":
            return jac
        diag = jac.diagonal(dim1=-2, dim2=-1)
        return diag.flatten(-2) if self.kind == "block" else diag

    def zero_where(self, jac: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Zero the Jacobians at the leading positions where ``mask`` is True."""
        expand = mask.reshape(*mask.shape, *([1] * self.jacobian_ndim))
        return jac.masked_fill(expand, 0.0)


DIAGONAL = JacobianStructure("diagonal")
DENSE = JacobianStructure("dense")


def block(k: int) -> JacobianStructure:
    return JacobianStructure("block", k)
