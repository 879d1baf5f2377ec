"""Triton kernels: fast paths behind the solver (DESIGN.md section 3, ``kernels`` layer).

- :mod:`.scan`: affine-recurrence scans for diagonal and 2x2/3x3 block Jacobians, forward
  and reverse in time (used by the solver for user cells of those structures).
- :mod:`.paragru`, :mod:`.paralstm`: fused whole-solve kernels for the reference cells
  (segmented sequential walk + boundary Newton forward, fused adjoint backward).

Nothing heavy is imported here: ``import pararnn.kernels`` works without Triton; import
the submodules only after :func:`triton_available` says so.
"""

from __future__ import annotations

import importlib.util


def triton_available() -> bool:
    """True if the ``triton`` package can be imported (the kernels need it)."""
    return importlib.util.find_spec("triton") is not None


__all__ = ["triton_available"]
