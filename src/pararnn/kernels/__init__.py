"""Triton kernels: fast paths behind the solver (docs/DESIGN.md, "Package layout").

- :mod:`.scan`: affine-recurrence scans for diagonal and 2x2/3x3 block Jacobians, forward
  and reverse in time (used by the solver for user cells of those structures).
- :mod:`.paragru`, :mod:`.paralstm`: one fused whole-solve op per cell,
  ``paragru_solve`` / ``paralstm_solve`` (segmented sequential walk + boundary Newton
  forward, fused adjoint backward, autograd Function beside each), with a plain PyTorch
  loop of the same signature (``paragru_naive`` / ``paralstm_naive``) that tests compare
  them to.
- :mod:`.causal_conv`, :mod:`.gated_norm`, :mod:`.decode_step`: the language-model block's
  causal conv (+ SiLU) and gated RMSNorm (one kernel each way, a ``*_naive`` reference
  beside each) and its one-token decode steps.

Nothing heavy is imported here: ``import pararnn.kernels`` works without Triton; import
the submodules only after :func:`triton_available` says so. Kernels never import cells,
layers or the solver.

Interpreter policy (the one place that decides it): Triton runs kernels in its CPU
interpreter when ``TRITON_INTERPRET=1`` is in the environment, and fixes that choice when
a kernel is *decorated*, i.e. when a kernel module is first imported. This package never
sets the variable; :func:`interpreter_enabled` reads it at call time, and the kernel
modules are imported lazily (on first use), so setting it at the start of a program, as
``tests/kernels/conftest.py`` does, is enough.
"""

from __future__ import annotations

import importlib.util
import os


# looked up once; a plain constant (not an lru_cache) so torch.compile reads it silently
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True if the ``triton`` package can be imported (the kernels need it)."""
    return _TRITON_FOUND


def interpreter_enabled() -> bool:
    """Whether Triton kernels run on CPU tensors (``TRITON_INTERPRET=1``), read now."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


__all__ = ["triton_available", "interpreter_enabled"]
