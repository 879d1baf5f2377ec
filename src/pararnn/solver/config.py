"""Newton options, the record of one solve, and the convergence error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

ON_FAILURE = ("raise", "sequential", "warn")


class NewtonConvergenceError(RuntimeError):
    """Newton's residual stayed above ``tol`` (or was not finite) after ``max_iters``."""


@dataclass(frozen=True)
class NewtonConfig:
    """How the parallel (Newton) solve runs and what it does when it fails.

    Args:
        max_iters: Newton iterations at most (>= 1). The reference cells with clipped
            recurrent weights converge to float32 precision in about 3.
        tol: bound on the max-abs residual ``|f(h_{t-1}, x_t) - h_t|``. ``None`` (the fast
            training default) runs exactly ``max_iters`` iterations and checks nothing
            (no device synchronisation; :class:`SolveInfo` then has no residual). With a
            number, the solve stops as soon as the residual is below it and, if it is
            still above (or not finite) after ``max_iters``, does what ``on_failure`` says.
        on_failure: ``"raise"`` a :class:`NewtonConvergenceError`; recompute with the
            ``"sequential"`` loop (always correct, slower); or ``"warn"`` and return the
            unconverged Newton result.
        jacobian: ``None`` uses the cell's exact Jacobian. ``"diagonal"`` runs quasi-Newton
            with only its diagonal: a dense or block cell then costs an O(N) scan instead of
            O(N^3) (dense) per combine, at the price of more iterations (linear instead of
            quadratic convergence). Needs ``tol``: convergence is then checked, not assumed.
            The backward pass always uses the exact Jacobian.
    """

    max_iters: int = 3
    tol: Optional[float] = None
    on_failure: str = "sequential"
    jacobian: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.max_iters, bool) or not isinstance(self.max_iters, int) or self.max_iters < 1:
            raise ValueError(f"NewtonConfig.max_iters must be an int >= 1, got {self.max_iters!r}")
        if self.tol is not None:
            if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not self.tol > 0:
                raise ValueError(f"NewtonConfig.tol must be a positive number or None, got {self.tol!r}")
        if self.jacobian not in (None, "diagonal"):
            raise ValueError(f"NewtonConfig.jacobian must be None or 'diagonal', got {self.jacobian!r}")
        if self.jacobian is not None and self.tol is None:
            raise ValueError("NewtonConfig.jacobian='diagonal' (quasi-Newton) needs a tol to check convergence")
        if self.on_failure not in ON_FAILURE:
            raise ValueError(
                f"NewtonConfig.on_failure must be one of {ON_FAILURE}, got {self.on_failure!r}"
            )


@dataclass
class SolveInfo:
    """What one call of the solver did (read it from ``RNN.last_solve``).

    Attributes:
        mode: ``"parallel"`` or ``"sequential"``: the path that ran.
        backend: implementation used, e.g. ``"torch"`` or ``"triton"``.
        iterations: Newton iterations applied (0 for the sequential path); for the fused
            Triton backend, the bound on its boundary-Newton rounds.
        residual: max-abs residual of the returned Newton states, as a 0-d tensor;
            measured only when ``tol`` is set (``None`` otherwise).
        converged: whether ``residual <= tol``; ``None`` when not measured.
        fell_back: True when Newton failed and the states were recomputed sequentially.
    """

    mode: str
    backend: str
    iterations: int = 0
    residual: Optional[torch.Tensor] = None
    converged: Optional[bool] = None
    fell_back: bool = False
