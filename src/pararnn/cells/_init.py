"""Initialisation, clipping, bias handling and fused-kernel eligibility shared by ParaGRUCell
and ParaLSTMCell (docs/DESIGN.md, "The cells")."""

from __future__ import annotations

import math

import torch


def xavier_normal_vector_(vector: torch.Tensor) -> torch.Tensor:
    """Xavier-Gaussian init of recurrent vectors, each row read as an (N x 1) matrix."""
    fan = vector.shape[-1] + 1
    with torch.no_grad():
        return vector.normal_(0.0, math.sqrt(2.0 / fan))


def clipped(vector: torch.Tensor, limit: float | None) -> torch.Tensor:
    """Clamp entries of a recurrent vector to ``[-limit, limit]``.

    For a diagonal recurrence ``diag(a)`` this bounds its operator norm by ``limit``,
    which keeps the cell's Jacobian small enough for Newton to converge in a few
    iterations (the ParaRNN paper uses 0.5 for language models). ``None``: no clipping.
    """
    if limit is None:
        return vector
    return vector.clamp(-limit, limit)


def check_clip(limit: float | None) -> float | None:
    if limit is None:
        return None
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not limit > 0:
        raise ValueError(f"recurrent_clip must be a positive number or None, got {limit!r}")
    return float(limit)


def gate_biases(bias: torch.Tensor | None, gates: int) -> tuple:
    """The rows of a per-gate bias ``(G, N)``, or ``G`` Nones without a bias."""
    return (None,) * gates if bias is None else bias.unbind(0)


def preactivation(u: torch.Tensor, weight: torch.Tensor, h: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """``u + weight ⊙ h (+ bias)`` as one fresh tensor.

    The multiply-add is one op and the bias is added in place, so evaluating a gate over
    a whole sequence allocates one ``(B, T, N)`` tensor instead of three: on a CPU the
    Newton solve is bound by such passes over memory. (In-place is autograd-safe here:
    ``addcmul``'s backward does not read its result.)
    """
    pre = torch.addcmul(u, weight, h)
    return pre if bias is None else pre.add_(bias)


def runs_own_step(cell, cls, *methods: str) -> bool:
    """Whether ``cell`` computes its step with ``cls``'s own ``methods``: a subclass that
    overrides one of them changes the recurrence, so the fused kernel of ``cls`` no
    longer applies to it."""
    return all(getattr(type(cell), name) is getattr(cls, name) for name in methods)
