"""Newton options, the record of one solve, and the convergence error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

ON_FAILURE = ("raise", "sequential", "warn")

# tol="auto": the scaled error max |h_t - h*_t| / (1 + |h_t|) a solve must reach (estimated
# from the residuals carried through the Jacobians, newton.estimated_error), by the dtype
# the state math runs in. A converged float32 solve sits near 1e-7..1e-6 (three
# iterations of the test cells at T=1000), a diverged or stalled one at 1e-2 and up, or
# NaN. Slowly converging solves (unclipped cells, long memories, long sequences) can land
# between the bound and the rounding level: they fall back to the exact loop; raise
# max_iters to keep them parallel.
AUTO_TOL = {torch.float32: 1e-4, torch.float64: 1e-8}


class NewtonConvergenceError(RuntimeError):
    """Newton's estimated error stayed above ``tol`` (or was not finite) after ``max_iters``."""


@dataclass(frozen=True)
class NewtonConfig:
    """How the parallel (Newton) solve runs and what it does when it fails.

    Args:
        max_iters: Newton iterations over the whole sequence at most (>= 1), on the generic
            path (PyTorch or Triton scans). ParaGRUCell and ParaLSTMCell with clipped
            recurrent weights converge to float32 precision in about 3.
        tol: bound on the scaled error of the states, ``max |h_t - h*_t| / (1 + |h_t|)``
            from the exact solution ``h*``. It is estimated, not assumed from the residual
            ``r_t = f(h_{t-1}, x_t) - h_t`` of each step alone: a step's error also moves
            every later state through the Jacobians, so the estimate solves
            ``e_t = J_t e_{t-1} + r_t`` (one more scan; where memory gates stay near 1 the
            residuals of thousands of steps add up). ``"auto"`` (the default) runs exactly
            ``max_iters`` iterations, then checks the estimate against a bound chosen from
            the compute dtype (1e-4 in float32, 1e-8 in float64) and applies
            ``on_failure``; on the fused GPU path, which walks time segments exactly,
            the check is on the segment boundaries' mismatches carried through the
            segments' Jacobians, and with ``on_failure="sequential"`` the check and the
            exact rerun are decided on the device, without a host synchronisation. A
            number also stops iterating early once a Newton update (the estimated error
            of the states before it) is below it. ``None`` checks nothing: exactly
            ``max_iters`` iterations, no estimate, no fallback (fast, but a solve that did
            not converge is returned silently).
        on_failure: ``"raise"`` a :class:`NewtonConvergenceError`; recompute with the
            ``"sequential"`` loop (always correct, slower); or ``"warn"`` and return the
            unconverged Newton result.
        jacobian: ``None`` uses the cell's exact Jacobian. ``"diagonal"`` runs quasi-Newton
            with only its diagonal: a dense or block cell then costs an O(N) scan instead of
            O(N^3) (dense) per combine, at the price of more iterations (linear instead of
            quadratic convergence). Needs a ``tol`` (``"auto"`` or a number): convergence is
            then checked, not assumed. The backward pass always uses the exact Jacobian.
        boundary_rounds: the fused kernels (ParaGRU/ParaLSTM on the GPU) walk each time
            segment exactly and run Newton only across segment boundaries: this bounds those
            rounds (>= 1; see :attr:`SolveInfo.boundary_rounds` for how many ran). ``tol``
            and ``on_failure`` apply to their result as to ``max_iters`` iterations.
    """

    max_iters: int = 3
    tol: Union[float, str, None] = "auto"
    on_failure: str = "sequential"
    jacobian: Optional[str] = None
    boundary_rounds: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.max_iters, bool) or not isinstance(self.max_iters, int) or self.max_iters < 1:
            raise ValueError(f"NewtonConfig.max_iters must be an int >= 1, got {self.max_iters!r}")
        if (isinstance(self.boundary_rounds, bool) or not isinstance(self.boundary_rounds, int)
                or self.boundary_rounds < 1):
            raise ValueError(
                f"NewtonConfig.boundary_rounds must be an int >= 1, got {self.boundary_rounds!r}")
        if self.tol is not None and self.tol != "auto":
            if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not self.tol > 0:
                raise ValueError(
                    f"NewtonConfig.tol must be 'auto', a positive number or None, got {self.tol!r}")
        if self.jacobian not in (None, "diagonal"):
            raise ValueError(f"NewtonConfig.jacobian must be None or 'diagonal', got {self.jacobian!r}")
        if self.jacobian is not None and self.tol is None:
            raise ValueError("NewtonConfig.jacobian='diagonal' (quasi-Newton) needs a tol to check convergence")
        if self.on_failure not in ON_FAILURE:
            raise ValueError(
                f"NewtonConfig.on_failure must be one of {ON_FAILURE}, got {self.on_failure!r}"
            )

    def tolerance(self, dtype: torch.dtype) -> Optional[float]:
        """The residual bound for state math in ``dtype`` (None: unchecked)."""
        if self.tol == "auto":
            return AUTO_TOL[dtype]
        return self.tol

    @property
    def stops_early(self) -> bool:
        """Whether iterating stops once the residual is below ``tol`` (a numeric tol)."""
        return self.tol is not None and self.tol != "auto"


class SolveInfo:
    """What one call of the solver did (read it from ``RNN.last_solve``).

    Attributes:
        mode: ``"parallel"`` or ``"sequential"``: the path that ran.
        backend: implementation used: ``"torch"``, ``"triton"`` (scan kernels) or
            ``"triton-fused"`` (fused whole-solve kernels).
        iterations: Newton iterations applied (0 for the sequential path and for the
            fused kernels, which run no global Newton).
        residual: the scaled residual ``max |f(h_{t-1}, x_t) - h_t| / (1 + |h_t|)`` of the
            returned Newton states as a 0-d tensor, when it was measured on the host after
            the last iteration (``None`` otherwise: an early stop measures ``error`` only).
        error: the estimated scaled error of the Newton states that ``tol`` bounds, as a
            0-d tensor (``None`` when not measured on the host): after the last iteration
            the residuals carried through the Jacobians; at an early stop the last update,
            the error of the states before it, which bounds that of the states after it.
        converged: whether the Newton (or boundary-Newton) result met ``tol``; ``None``
            when nothing was checked.
        fell_back: whether (part of) the states were recomputed by the exact sequential
            walk because the parallel solve did not converge.
        segments: fused kernels only: time segments of the launch plan (1: one exact
            sequential walk).
        boundary_rounds: fused kernels only: boundary-Newton rounds run (0 for one segment).
        exact_walk: fused kernels only: whether the plan was one exact sequential walk.

    On the fused path the fallback is decided on the device: ``converged`` and
    ``fell_back`` then read a device flag the first time they are accessed (that read
    synchronises; the solve itself does not).
    """

    def __init__(self, mode: str, backend: str, iterations: int = 0, *,
                 residual: Optional[torch.Tensor] = None, error: Optional[torch.Tensor] = None,
                 converged: Optional[bool] = None,
                 fell_back: bool = False, segments: Optional[int] = None,
                 boundary_rounds: Optional[int] = None,
                 fallback_flags: Optional[torch.Tensor] = None) -> None:
        self.mode, self.backend, self.iterations = mode, backend, iterations
        self.residual, self.error = residual, error
        self.segments, self.boundary_rounds = segments, boundary_rounds
        self._converged, self._fell_back = converged, fell_back
        self._flags = fallback_flags  # device flags of the fused verification walk

    def set_fallback_flags(self, flags: torch.Tensor) -> None:
        """Record a device tensor whose any() says whether the solve fell back."""
        self._flags = flags

    @property
    def exact_walk(self) -> Optional[bool]:
        return None if self.segments is None else self.segments == 1

    def _read_flags(self) -> None:
        if self._flags is not None:
            self._fell_back = bool(self._flags.any())
            self._converged = not self._fell_back
            self._flags = None

    @property
    def fell_back(self) -> bool:
        self._read_flags()
        return self._fell_back

    @fell_back.setter
    def fell_back(self, value: bool) -> None:
        self._flags, self._fell_back = None, value

    @property
    def converged(self) -> Optional[bool]:
        self._read_flags()
        return self._converged

    @converged.setter
    def converged(self, value: Optional[bool]) -> None:
        self._converged = value

    def __repr__(self) -> str:
        fields = [f"mode={self.mode!r}", f"backend={self.backend!r}",
                  f"iterations={self.iterations}"]
        if self.residual is not None:
            fields.append(f"residual={float(self.residual):.3e}")
        if self.error is not None:
            fields.append(f"error={float(self.error):.3e}")
        if self.segments is not None:
            fields += [f"segments={self.segments}", f"boundary_rounds={self.boundary_rounds}"]
        fields += [f"converged={self.converged}", f"fell_back={self.fell_back}"]
        return f"SolveInfo({', '.join(fields)})"
