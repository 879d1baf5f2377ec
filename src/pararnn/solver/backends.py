"""Which implementation solves: the PyTorch reference, or a Triton kernel when one applies.

``backend="torch"`` always takes the PyTorch path. ``backend="triton"`` requires a kernel
for the structure and dtype (CUDA tensors, or CPU tensors under Triton's interpreter,
``TRITON_INTERPRET=1``) and raises otherwise. ``backend="auto"`` takes the kernel on CUDA
when one applies and the PyTorch path everywhere else (float64 always stays in PyTorch).
"""

from __future__ import annotations

import os

import torch

from ..kernels import triton_available
from ..scan import solve_linear_recurrence
from ..structure import JacobianStructure


def triton_runs_on(device: torch.device) -> bool:
    """Whether Triton kernels can launch on tensors of ``device``."""
    if not triton_available():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def select_scan(structure: JacobianStructure, device: torch.device, dtype: torch.dtype, backend: str):
    """The linear-recurrence solver for this structure, device and dtype, and its name."""
    if backend == "torch":
        return solve_linear_recurrence, "torch"
    usable = triton_runs_on(device)
    if usable:
        from ..kernels import scan

        usable = scan.supports(structure, dtype)
    if backend == "triton":
        if not usable:
            raise ValueError(
                f"backend='triton' has no scan kernel for jacobian={structure.kind!r}"
                f"{f' (block_size={structure.block_size})' if structure.kind == 'block' else ''}, "
                f"dtype {dtype} on {device.type} (kernels: diagonal and 2x2/3x3 blocks, float32/"
                "bfloat16, CUDA or TRITON_INTERPRET=1); use backend='torch' or 'auto'"
            )
        return scan.linear_recurrence, "triton"
    if usable and device.type == "cuda":
        return scan.linear_recurrence, "triton"
    return solve_linear_recurrence, "torch"


class FusedSolve:
    """Fused Triton whole-solve for a reference cell (:mod:`pararnn.kernels.paragru` /
    :mod:`~pararnn.kernels.paralstm`): forward and backward over a whole (B, T) batch.

    ``weights`` are the cell's ``recurrent_weights()`` (after clipping), as a tuple, and
    ``bias`` the cell's gate bias ``(3, N)`` or None;
    ``resets`` is bool (B, T) (True where step t restarts from ``h0``; step 0 always
    does) or None; one initial state per batch row. The launch plan inside the kernels
    is the measured per-shape rule (:func:`pararnn.kernels._fused_common.make_plan`): one
    segment, i.e. the fused sequential loop, when batch x channels alone fill the GPU,
    otherwise the segmented hybrid (sequential inside segments, Newton across them).
    """

    name = "triton-fused"

    def __init__(self, module):
        self.module = module

    def forward(self, x, h0, resets, rounds: int, weights, bias, verify_tol, sequential):
        """All states (B, T, state_size) in float32 and the kernels' ``ForwardReport``;
        ``rounds`` bounds the boundary-Newton rounds, ``verify_tol`` (or None) turns on
        the on-device exact rerun of unconverged blocks, ``sequential`` walks one segment."""
        return self.module.forward(x, *weights, h0, resets, rounds, bias=bias,
                                   verify_tol=verify_tol, sequential=sequential)

    def backward(self, x, h0, resets, states, grad_states, weights, bias):
        """``(grad_x, grad_weights, grad_h0, grad_bias)``; ``grad_weights`` matches
        ``weights``, ``grad_x`` has the dtype of ``x``, ``grad_bias`` is None without bias."""
        grad_x, *grad_w, grad_h0, grad_bias = self.module.backward(
            x, *weights, h0, resets, states, grad_states, bias=bias)
        return grad_x, tuple(grad_w), grad_h0, grad_bias


def select_fused(cell, x: torch.Tensor, backend: str):
    """A fused whole-solve implementation for ``cell``, or None to use the generic path.

    Only the reference cells (exact types ParaGRUCell / ParaLSTMCell: a subclass may change
    the step) on float32/bfloat16 input have fused kernels. ``"auto"`` takes them on CUDA,
    ``"triton"`` also under the CPU interpreter, ``"torch"`` never.
    """
    if backend == "torch" or not triton_runs_on(x.device):
        return None
    from ..cells import ParaGRUCell, ParaLSTMCell

    if type(cell) is ParaGRUCell:
        from ..kernels import paragru as module
    elif type(cell) is ParaLSTMCell:
        from ..kernels import paralstm as module
    else:
        return None
    if not module.supports(x):
        return None
    if backend == "auto" and x.device.type != "cuda":
        return None
    return FusedSolve(module)
