"""Parallel solution of affine recurrences in plain PyTorch (any device, any dtype).

Solves ``h_t = J_t h_{t-1} + r_t`` for ``t = 0..T-1`` with ``h_{-1} = 0`` by odd-even
reduction: compose neighbouring pairs of affine maps (one batched op), solve the
half-length recurrence recursively, then fill in the even steps (one batched op).
Depth O(log T), work O(T) compositions, no Python loop over time; any T >= 1.

Initial states and resets are not arguments: callers fold an initial state into
``r_0`` and zero ``J_t`` where the state restarts (see :mod:`pararnn.solver`).
``J_0`` is never read (``h_0 = r_0``), so a caller without resets need not zero it.
"""

from __future__ import annotations

import torch

from ..structure import JacobianStructure

# Blocks up to this size are combined entry-column by entry-column with elementwise ops;
# larger blocks and dense Jacobians use the structure's batched matmuls.
_EXPLICIT_BLOCK = 4


def solve_linear_recurrence(
    jac: torch.Tensor,
    rhs: torch.Tensor,
    structure: JacobianStructure,
    *,
    reverse: bool = False,
) -> torch.Tensor:
    """All states of an affine recurrence along dim 1.

    Args:
        jac: Jacobians in ``structure``'s storage with leading dims ``(B, T)``.
        rhs: ``(B, T, N)``.
        reverse: if False, ``h_t = J_t h_{t-1} + r_t`` (``J_0`` unused); if True,
            ``h_t = J_t h_{t+1} + r_t`` (``J_{T-1}`` unused), i.e. the recurrence
            runs backwards in time, as adjoints do.

    Returns:
        ``(B, T, N)`` states.
    """
    algebra = _Algebra(structure)
    tail = jac[:, :-1].flip(1) if reverse else jac[:, 1:]
    if reverse:
        rhs = rhs.flip(1)
    if algebra.kind == "block":
        tail, rhs = algebra.to_planar(tail, rhs)
    states = _odd_even_solve(tail, rhs, algebra)
    if algebra.kind == "block":
        states = algebra.from_planar(states)
    return states.flip(1) if reverse else states


class _Algebra:
    """``compose`` and fused ``J v + r`` for one structure, with elementwise fast paths.

    The structure's generic ops build a ``k``-times larger broadcast product and reduce
    it; for the diagonal and small blocks the same sums written out term by term (with
    ``addcmul``) read and write each operand once, which is what bounds the scan on a CPU.
    Small blocks are first copied to a planar layout, block entry ``(i, j)`` of all
    ``n`` blocks contiguous: ``(..., k, k, n)`` Jacobians and ``(..., k, n)`` states, so
    that every op runs over contiguous rows of ``n`` (vectorised) instead of over
    interleaved entries of stride ``k``.
    """

    def __init__(self, structure: JacobianStructure) -> None:
        self.structure = structure
        self.kind = structure.kind
        if self.kind == "block" and structure.block_size > _EXPLICIT_BLOCK:
            self.kind = "matmul"
        self.k = structure.block_size

    def to_planar(self, jac: torch.Tensor, rhs: torch.Tensor):
        """``(..., n, k, k)`` Jacobians and ``(..., n * k)`` vectors -> planar copies."""
        planar = jac.movedim(-3, -1)
        if planar.stride(-1) != 1:  # a cell may already store its blocks entry-major
            planar = planar.contiguous()
        return planar, rhs.unflatten(-1, (-1, self.k)).movedim(-1, -2).contiguous()

    def from_planar(self, states: torch.Tensor) -> torch.Tensor:
        """Planar ``(..., k, n)`` states -> ``(..., n * k)``."""
        return states.movedim(-2, -1).flatten(-2)

    def transpose(self, jac: torch.Tensor) -> torch.Tensor:
        """``J^T`` per step, as a view (planar blocks: swap the entry dims ``i, j``)."""
        if self.kind == "block":
            return jac.transpose(-3, -2)
        return self.structure.transpose(jac)

    def compose(self, outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
        """``outer @ inner`` per step."""
        if self.kind == "diagonal":
            return outer * inner
        if self.kind == "block":
            # planar (..., i, j, n): column j of outer times row j of inner, summed over j
            out = outer[..., :, 0:1, :] * inner[..., 0:1, :, :]
            for j in range(1, self.k):
                out.addcmul_(outer[..., :, j:j + 1, :], inner[..., j:j + 1, :, :])
            return out
        return self.structure.compose(outer, inner)

    def apply(self, jac: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """``J v`` per step."""
        if self.kind == "diagonal":
            return jac * vec
        if self.kind == "block":  # planar, as in apply_add
            result = jac[..., :, 0, :] * vec[..., 0:1, :]
            for j in range(1, self.k):
                result.addcmul_(jac[..., :, j, :], vec[..., j:j + 1, :])
            return result
        return self.structure.apply(jac, vec)

    def apply_add(self, jac: torch.Tensor, vec: torch.Tensor, rhs: torch.Tensor,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """``J v + r`` per step, written into ``out`` when given."""
        if self.kind == "diagonal":
            return torch.addcmul(rhs, jac, vec, out=out)
        if self.kind == "block":  # planar: jac (..., i, j, n), vec and rhs (..., j, n)
            result = torch.addcmul(rhs, jac[..., :, 0, :], vec[..., 0:1, :], out=out)
            for j in range(1, self.k):
                result.addcmul_(jac[..., :, j, :], vec[..., j:j + 1, :])
            return result
        result = self.structure.apply(jac, vec) + rhs
        if out is None:
            return result
        return out.copy_(result)


def _odd_even_solve(tail: torch.Tensor, rhs: torch.Tensor, algebra: _Algebra) -> torch.Tensor:
    """States of ``h_0 = r_0``, ``h_t = tail[t-1] h_{t-1} + r_t`` (``tail`` holds J_1..J_{T-1})."""
    steps = rhs.shape[1]
    if steps == 1:
        return rhs
    pairs = steps // 2
    # Step 2i+1 expressed through step 2i-1: (J_{2i+1}, r_{2i+1}) ∘ (J_{2i}, r_{2i}); for
    # i = 0 only the right-hand side (h_{-1} = 0), so the half problem's tail starts at i = 1.
    odd_jac = tail[:, 0 : 2 * pairs : 2]  # J_{2i+1}
    pair_rhs = algebra.apply_add(odd_jac, rhs[:, 0 : 2 * pairs : 2], rhs[:, 1 : 2 * pairs : 2])
    pair_tail = algebra.compose(odd_jac[:, 1:], tail[:, 1 : 2 * pairs - 1 : 2])
    odd_states = _odd_even_solve(pair_tail, pair_rhs, algebra)  # h_1, h_3, ...

    # Even steps 2i >= 2 from the odd state before them; h_0 = r_0.
    states = torch.empty_like(rhs)
    states[:, 1::2] = odd_states
    states[:, 0] = rhs[:, 0]
    n_later_even = (steps + 1) // 2 - 1
    if n_later_even:
        later_even = (tail[:, 1::2], odd_states[:, :n_later_even], rhs[:, 2::2])
        if torch.compiler.is_compiling():  # dynamo cannot trace out= into a view
            states[:, 2::2] = algebra.apply_add(*later_even)
        else:
            algebra.apply_add(*later_even, out=states[:, 2::2])
    return states


def solve_adjoint_loop(jac: torch.Tensor, rhs: torch.Tensor, structure: JacobianStructure,
                       carry: torch.Tensor | None = None, *, with_carry: bool = False):
    """The adjoint recurrence ``λ_t = r_t + J_{t+1}^T λ_{t+1}`` (``J_0`` unused) by a loop
    over the steps, from ``λ_{T-1} = r_{T-1} + carry`` (``carry``: the term ``J_T^T λ_T`` of
    a later piece of the sequence, ``(B, N)``; zero when None).

    One fused multiply-add per step over ``B x N`` entries: on a CPU cheaper than the
    scan's whole-sequence passes when ``B x N`` is large, which is when the sequential
    backward (:class:`pararnn.solver.newton.LoopSolve`) runs it. With ``with_carry``,
    returns ``(λ, J_0^T λ_0)``: the carry of the piece before this one.
    """
    algebra = _Algebra(structure)
    steps = jac if with_carry else jac[:, 1:]  # J_0 is read only for the carry
    if algebra.kind == "block":
        steps, rhs = algebra.to_planar(steps, rhs)
        if carry is not None:
            carry = carry.unflatten(-1, (-1, algebra.k)).movedim(-1, -2)
    adjoints = torch.empty_like(rhs)
    coefficients, terms, outs = algebra.transpose(steps).unbind(1), rhs.unbind(1), adjoints.unbind(1)
    if with_carry:  # coefficients[t] is J_t^T here, J_{t+1}^T without the carry
        coefficients = coefficients[1:] + coefficients[:1]
    if carry is None:
        outs[-1].copy_(terms[-1])
    else:
        torch.add(terms[-1], carry, out=outs[-1])
    for t in range(len(outs) - 2, -1, -1):
        algebra.apply_add(coefficients[t], outs[t + 1], terms[t], out=outs[t])
    if algebra.kind == "block":
        adjoints = algebra.from_planar(adjoints)
    if not with_carry:
        return adjoints
    next_carry = algebra.apply(coefficients[-1], outs[0])
    return adjoints, algebra.from_planar(next_carry) if algebra.kind == "block" else next_carry


def solve_linear_recurrence_sequential(
    jac: torch.Tensor,
    rhs: torch.Tensor,
    structure: JacobianStructure,
    *,
    reverse: bool = False,
) -> torch.Tensor:
    """The same recurrence as :func:`solve_linear_recurrence`, by a plain loop (reference)."""
    steps = rhs.shape[1]
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    states = torch.empty_like(rhs)
    h = torch.zeros_like(rhs[:, 0])
    for t in order:
        h = structure.apply(jac[:, t], h) + rhs[:, t]
        states[:, t] = h
    return states
