"""Solvers of affine recurrences ``h_t = J_t h_{t-1} + r_t`` (the inner step of Newton)."""

from .pytorch import solve_linear_recurrence, solve_linear_recurrence_sequential

__all__ = ["solve_linear_recurrence", "solve_linear_recurrence_sequential"]
