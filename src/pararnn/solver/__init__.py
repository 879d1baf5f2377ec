"""The solver: Newton driver, convergence policy, sequential reference, autograd Function."""

from .api import solve
from .config import NewtonConfig, NewtonConvergenceError, SolveInfo

__all__ = ["solve", "NewtonConfig", "NewtonConvergenceError", "SolveInfo"]
