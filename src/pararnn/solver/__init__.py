"""The solver: ``solve`` and its options.

- :mod:`.api`: ``solve``, the one entry point layers call; picks the path (sequential
  loop, a cell's fused kernels, or generic Newton) and applies the safety policy.
- :mod:`.newton`: the generic path for any cell: Newton + scan forward, adjoint-scan
  backward (an autograd Function), the sequential loop, failure handling, structure check.
- :mod:`.backends`: which scan implementation / fused op applies to a cell, dtype, device.
- :mod:`.inputs`: validation of arguments and the sequence bookkeeping (resets, cu_seqlens).
- :mod:`.config`: ``NewtonConfig``, ``SolveInfo``, ``NewtonConvergenceError``.
"""

from .api import solve
from .config import NewtonConfig, NewtonConvergenceError, SolveInfo
from .inputs import check_cell, check_options

__all__ = ["solve", "NewtonConfig", "NewtonConvergenceError", "SolveInfo", "check_cell",
           "check_options"]
