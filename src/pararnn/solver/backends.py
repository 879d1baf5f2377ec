"""Which implementation solves: the PyTorch reference, or a fast kernel when one applies."""

from __future__ import annotations

import torch

from ..scan import solve_linear_recurrence
from ..structure import JacobianStructure


def select_scan(structure: JacobianStructure, device: torch.device, dtype: torch.dtype, backend: str):
    """The linear-recurrence solver for this structure, device and dtype, and its name."""
    return solve_linear_recurrence, "torch"


def select_fused(cell, x: torch.Tensor, backend: str):
    """A fused whole-solve implementation for ``cell``, or None to use the generic path."""
    return None
