"""Which implementation solves: the PyTorch scan, or a Triton kernel when one applies.

``backend="torch"`` always takes the PyTorch path. ``backend="triton"`` requires a kernel
for the structure and dtype (CUDA tensors, or CPU tensors under Triton's interpreter,
``TRITON_INTERPRET=1``) and raises otherwise. ``backend="auto"`` takes the kernel on CUDA
when one applies and the PyTorch path everywhere else (float64 always stays in PyTorch).
"""

from __future__ import annotations

import torch

from ..kernels import interpreter_enabled, triton_available
from ..scan import solve_linear_recurrence
from ..structure import JacobianStructure


def triton_runs_on(device: torch.device) -> bool:
    """Whether Triton kernels can launch on tensors of ``device``."""
    if not triton_available():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreter_enabled()


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


def select_fused(cell, x: torch.Tensor, backend: str):
    """The cell's fused whole-solve (its :meth:`~pararnn.Cell.fused_solver` hook), or None
    to use the generic path.

    Fused kernels take float32/bfloat16 input. ``"auto"`` takes them on CUDA,
    ``"triton"`` also under the CPU interpreter, ``"torch"`` never.
    """
    if backend == "torch" or x.dtype not in (torch.float32, torch.bfloat16):
        return None
    if not triton_runs_on(x.device) or (backend == "auto" and x.device.type != "cuda"):
        return None
    return cell.fused_solver()
