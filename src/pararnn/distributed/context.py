"""Context parallelism: one recurrence split along time over the ranks of a process group.

Rank ``k`` of a group of ``K`` holds the contiguous time chunk ``x_k`` ``(B, T_k, F)``.
Its states depend on the earlier chunks only through its *incoming state* ``s_k`` (the
state at the end of chunk ``k - 1``; ``s_0 = h0``), and its end state is a function
``e_k = F_k(s_k)``. The incoming states solve the K-step system ``s_{k+1} = F_k(s_k)``,
which this module solves by Newton's method over the ranks:

1. every rank solves its chunk from its current ``s_k`` with :func:`pararnn.solve` (the
   fused kernels on GPU) and composes its per-step Jacobians into the chunk Jacobian
   ``A_k = ∂e_k/∂s_k = J_T ... J_1`` (O(N) per step for diagonal or 2x2-block cells);
2. one all-gather shares ``(A_k, e_k)``; every rank then holds all of them, measures the
   boundary mismatch ``max |e_{k-1} - s_k|`` and, if it is above ``boundary_tol``,
   applies the Newton update ``s_k <- e_{k-1} + A_{k-1} (s_{k-1}^new - s_{k-1})`` (a
   K-step recurrence, computed redundantly on every rank).

After round ``r`` the first ``r + 1`` incoming states are exact, so ``K`` rounds give the
exact solution (``boundary_tol=None``); a contractive cell usually meets a float tolerance
in 2-3. A rank whose incoming state did not change keeps its chunk solve.

The backward pass mirrors this: each rank runs its adjoint scan with nothing arriving at
its chunk end, giving the gradient ``μ_k^local`` of its own loss terms with respect to
``s_k``; one all-gather shares those, every rank solves the reversed recurrence
``μ_k = μ_k^local + A_k^T μ_{k+1}`` for the adjoint arriving at its chunk end, reruns its
adjoint scan with it, and takes all gradients with one VJP of the cell over the chunk.

Conventions (the total loss is the sum of every rank's loss terms, as in DDP):

* ``h_n`` (the last rank's final state) is returned on every rank; its gradient is the
  sum of the gradients all ranks send to it.
* ``h0`` is the initial state of the whole sequence, the same tensor on every rank; its
  gradient is split over the ranks (rank 0 gets the part through ``s_0``, every rank the
  part through resets in its chunk): sum it over the group for the full gradient.
* parameter gradients are this rank's contributions: all-reduce (sum) them over the
  group, which DDP/FSDP over the ranks do (as a mean).
* every rank must run forward and backward: the collectives pair up across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch.func import functional_call

from ..cells import Cell
from ..solver import NewtonConfig, solve
from ..structure import JacobianStructure
from ..scan import solve_linear_recurrence
from .affine import compose_chunk


@dataclass
class ContextSolveInfo:
    """What one context-parallel solve did on this rank.

    Attributes:
        rounds: boundary Newton rounds (one all-gather each); at most the group size.
        residual: max-abs boundary mismatch ``|e_{k-1} - s_k|`` over all boundaries at the
            last round (0.0 for a group of one rank).
        chunk_solves: solves of this rank's chunk (a rank whose incoming state did not
            change between rounds keeps its states).
        backend: the path of this rank's chunk solves, as :attr:`pararnn.SolveInfo.backend`
            (e.g. ``"triton-fused"`` where the fused kernels ran).
    """

    rounds: int
    residual: float
    chunk_solves: int
    backend: str


@dataclass(frozen=True)
class _Options:
    mode: str
    newton: Optional[NewtonConfig]
    backend: str
    boundary_tol: Optional[float]


def context_parallel_solve(cell: Cell, x: torch.Tensor, h0: torch.Tensor | None = None, *,
                           group: dist.ProcessGroup | None = None, resets: torch.Tensor | None = None,
                           mode: str = "auto", newton: NewtonConfig | None = None,
                           backend: str = "auto", boundary_tol: float | None = None):
    """:func:`pararnn.solve` for a sequence split along time over the ranks of ``group``.

    Args:
        cell: a :class:`pararnn.Cell` (the same parameters on every rank).
        x: this rank's chunk ``(B, T_k, input_size)``; rank ``k`` of ``group`` holds the
            ``k``-th chunk. Chunk lengths may differ between ranks; ``B`` may not.
        h0: initial state ``(B, N)`` of the whole sequence (zeros if None), the same on
            every rank.
        group: the context process group (default: the whole world).
        resets: optional bool ``(B, T_k)`` for this chunk: True where the state restarts
            from ``h0`` (packed documents); a reset cuts the chunk's dependence on ``s_k``.
        mode, newton, backend: passed to :func:`pararnn.solve` for every chunk solve.
        boundary_tol: stop the boundary Newton rounds once the max-abs mismatch is at most
            this; ``None`` runs all ``K`` rounds (exact up to rounding).

    Returns:
        ``(states, h_n, info)``: this chunk's states ``(B, T_k, N)``, the final state of the
        whole sequence ``(B, N)`` on every rank, and a :class:`ContextSolveInfo`.
    """
    _check_arguments(cell, x, h0, resets, boundary_tol)
    if h0 is None:
        h0 = x.new_zeros(x.shape[0], cell.state_size, dtype=_compute_dtype(cell, x))
    options = _Options(mode, newton, backend, boundary_tol)
    info_out: list[ContextSolveInfo] = []
    states, h_n = _ContextParallelSolve.apply(cell, group, options, info_out, resets, x, h0,
                                              *cell.parameters())
    return states, h_n, info_out[0]


def _check_arguments(cell, x, h0, resets, boundary_tol) -> None:
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a pararnn.Cell, got {type(cell).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be this rank's chunk (batch, time, input_size), got {shape}")
    if h0 is not None and (not isinstance(h0, torch.Tensor)
                           or tuple(h0.shape) != (x.shape[0], cell.state_size)):
        got = tuple(h0.shape) if isinstance(h0, torch.Tensor) else type(h0).__name__
        raise ValueError(f"h0 must have shape (batch, state_size) = {(x.shape[0], cell.state_size)}, got {got}")
    if resets is not None and (not isinstance(resets, torch.Tensor) or resets.dtype != torch.bool
                               or tuple(resets.shape) != tuple(x.shape[:2])):
        raise ValueError(f"resets must be a bool tensor of shape (batch, time) = {tuple(x.shape[:2])}")
    if boundary_tol is not None and (isinstance(boundary_tol, bool) or not isinstance(boundary_tol, (int, float))
                                     or not boundary_tol > 0):
        raise ValueError(f"boundary_tol must be a positive number or None, got {boundary_tol!r}")
    dtype = _compute_dtype(cell, x)
    if x.dtype in (torch.float32, torch.float64) and x.dtype != dtype:
        raise TypeError(f"x has dtype {x.dtype} but the cell's parameters are {dtype}; expected x of dtype {dtype}")
    if not dist.is_initialized():
        raise ValueError("group: context parallelism needs an initialised torch.distributed process "
                         "group (torch.distributed.init_process_group, e.g. under torchrun)")


def _compute_dtype(cell: Cell, x: torch.Tensor) -> torch.dtype:
    """The dtype the state math runs in: the cell's, else float32 for reduced-precision x."""
    for p in cell.parameters():
        if p.is_floating_point():
            return p.dtype
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


class _Chunk:
    """This rank's piece of the recurrence: solve it from an incoming state, and its Jacobians.

    With resets, the steps from a row's first reset on start from ``h0``, not from the
    incoming state, while :func:`pararnn.solve` restarts every reset from the state it is
    given. So the chunk is solved twice and merged: once from ``h0`` (right from the first
    reset on; incoming-independent, done once) and once from ``s_k`` (right before it).
    """

    def __init__(self, cell, x, h0, resets, options: _Options, first: bool):
        self.cell, self.x, self.h0, self.options, self.first = cell, x, h0, options, first
        self.resets = resets if resets is not None and bool(resets.any()) else None
        self.restarted = None  # the solve from h0, made on first use
        self.backend = ""  # what the last chunk solve ran on

    def _solve(self, incoming: torch.Tensor) -> torch.Tensor:
        opts = self.options
        states, _, info = solve(self.cell, self.x, incoming, mode=opts.mode, newton=opts.newton,
                                resets=self.resets, backend=opts.backend)
        self.backend = info.backend
        return states

    def states_from(self, incoming: torch.Tensor) -> torch.Tensor:
        if self.resets is None:
            return self._solve(incoming)
        if self.restarted is None:
            self.restarted = self._solve(self.h0)
        if self.first:  # s_0 is h0: both solves agree
            return self.restarted
        before_reset = (self.resets.cumsum(1) == 0).unsqueeze(-1)
        return torch.where(before_reset, self._solve(incoming), self.restarted)

    def previous(self, states, incoming, h0) -> torch.Tensor:
        """``h_{t-1}`` as each step of the chunk sees it."""
        prev = torch.cat((incoming.unsqueeze(1), states[:, :-1]), dim=1)
        if self.resets is None:
            return prev
        return torch.where(self.resets.unsqueeze(-1), h0.unsqueeze(1), prev)

    def jacobians(self, states, incoming, weights: dict) -> torch.Tensor:
        """Per-step ``∂h_t/∂h_{t-1}``, zero at resets (where the previous state is unused)."""
        prev = self.previous(states, incoming, self.h0)
        _, jac = functional_call(self.cell, weights, (self.x, prev), {"jacobian": True})
        if self.resets is None:
            return jac
        return self.cell.structure.zero_where(jac, self.resets)


def _gather(group, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """All-gather several ``(B, ...)`` tensors in one collective; each comes back ``(K, B, ...)``."""
    batch = tensors[0].shape[0]
    flat = torch.cat([t.reshape(batch, -1) for t in tensors], dim=1).contiguous()
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, flat, group=group)
    stacked = torch.stack(parts)
    sizes = [t[0].numel() for t in tensors]
    return [piece.reshape(-1, *t.shape) for piece, t in zip(stacked.split(sizes, dim=2), tensors)]


def _newton_update(structure: JacobianStructure, incoming, ends, composed) -> torch.Tensor:
    """Newton step on the boundary system ``s_{k+1} = F_k(s_k)``, linearised by ``A_k``."""
    updated = [incoming[0]]
    for k in range(1, incoming.shape[0]):
        change = updated[k - 1] - incoming[k - 1]
        updated.append(ends[k - 1] + structure.apply(composed[k - 1], change))
    return torch.stack(updated)


def _solve_boundaries(chunk: _Chunk, group, weights: dict):
    """Boundary Newton rounds; returns this chunk's incoming state and states, every chunk's
    composed Jacobian and end state, and the info record."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    structure = chunk.cell.structure
    incoming = chunk.h0.new_zeros(size, *chunk.h0.shape)
    incoming[0] = chunk.h0
    states = used = None
    solves = rounds = 0
    residual = 0.0
    tol = chunk.options.boundary_tol
    for rounds in range(1, size + 1):
        if used is None or not torch.equal(incoming[rank], used):
            used = incoming[rank].clone()
            states = chunk.states_from(used)
            composed = compose_chunk(structure, chunk.jacobians(states, used, weights))
            solves += 1
        all_composed, ends = _gather(group, composed, states[:, -1])
        residual = float((ends[:-1] - incoming[1:]).abs().amax()) if size > 1 else 0.0
        if rounds == size or (tol is not None and residual <= tol):
            break
        incoming = _newton_update(structure, incoming, ends, all_composed)
    return used, states, all_composed, ends, ContextSolveInfo(rounds, residual, solves, chunk.backend)


class _ContextParallelSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, group, options, info_out, resets, x, h0, *params):
        with torch.autocast(x.device.type, enabled=False):  # the state math runs in `dtype`
            return _ContextParallelSolve._forward(ctx, cell, group, options, info_out, resets, x, h0, *params)

    @staticmethod
    def _forward(ctx, cell, group, options, info_out, resets, x, h0, *params):
        dtype = _compute_dtype(cell, x)
        rank = dist.get_rank(group)
        names = [name for name, _ in cell.named_parameters()]
        chunk = _Chunk(cell, x.to(dtype), h0.to(dtype), resets, options, first=rank == 0)
        incoming, states, all_composed, ends, info = _solve_boundaries(
            chunk, group, dict(zip(names, params)))
        info_out.append(info)
        ctx.cell, ctx.group, ctx.options, ctx.names, ctx.rank = cell, group, options, names, rank
        ctx.save_for_backward(resets, x, h0, incoming, states, all_composed, *params)
        # the final state in the compute dtype, as the layer's own (decoding from it does not
        # round the state)
        return states.to(x.dtype), ends[-1]

    @staticmethod
    def backward(ctx, grad_states, grad_h_n):
        if torch.is_grad_enabled():
            raise RuntimeError("the context-parallel solve does not support double backward")
        with torch.autocast(grad_states.device.type, enabled=False):
            return _ContextParallelSolve._backward(ctx, grad_states, grad_h_n)

    @staticmethod
    def _backward(ctx, grad_states, grad_h_n):
        resets, x, h0, incoming, states, all_composed, *params = ctx.saved_tensors
        cell, group, rank = ctx.cell, ctx.group, ctx.rank
        structure = cell.structure
        dtype = states.dtype
        weights = dict(zip(ctx.names, params))
        chunk = _Chunk(cell, x.to(dtype), h0.to(dtype), resets, ctx.options, first=rank == 0)

        jac = chunk.jacobians(states, incoming, weights)
        # adjoint recurrence λ_t = g_t + J_{t+1}^T λ_{t+1}; the last slot's coefficient is unused
        next_jac_t = structure.transpose(torch.cat((jac[:, 1:], torch.zeros_like(jac[:, :1])), dim=1))
        grad = grad_states.to(dtype)
        local = solve_linear_recurrence(next_jac_t, grad, structure, reverse=True)
        local_incoming = structure.apply(structure.transpose(jac[:, 0]), local[:, 0])
        all_local, all_h_n = _gather(group, local_incoming, grad_h_n.to(dtype))
        arriving = all_h_n.sum(0)  # the adjoint of h_n = s_K
        for k in range(all_local.shape[0] - 1, rank, -1):
            arriving = all_local[k] + structure.apply(structure.transpose(all_composed[k]), arriving)
        grad = torch.cat((grad[:, :-1], grad[:, -1:] + arriving.unsqueeze(1)), dim=1)
        adjoint = solve_linear_recurrence(next_jac_t, grad, structure, reverse=True)

        needs = ctx.needs_input_grad[5:]
        leaves = [t.detach().requires_grad_(need) for t, need in zip((x, h0, *params), needs)]
        x_leaf, h0_leaf, *param_leaves = leaves
        with torch.enable_grad():
            h0_in = h0_leaf.to(dtype)
            prev = chunk.previous(states, h0_in if rank == 0 else incoming, h0_in)
            value = functional_call(cell, dict(zip(ctx.names, param_leaves)), (x_leaf.to(dtype), prev))
            wanted = [t for t, need in zip(leaves, needs) if need]
            grads = torch.autograd.grad(value, wanted, adjoint, allow_unused=True)
        # zeros, not None, where this chunk does not reach an input (h0 on ranks > 0 without
        # resets): every rank then has a gradient to all-reduce
        grads = iter(torch.zeros_like(t) if g is None else g for g, t in zip(grads, wanted))
        return (None,) * 5 + tuple(next(grads) if need else None for need in needs)
