"""Context parallelism: one sequence split along time over the ranks of a process group.

* :func:`context_parallel_solve`: :func:`pararnn.solve` on this rank's time chunk;
* :class:`ContextParallel`: wrap an ``RNN`` / ``ParaGRU`` / ``ParaLSTM`` layer;
* :func:`enable_context_parallel`: the ParaGRU/ParaLSTM language models
  (``pararnn train --context-parallel K``).

Data parallelism (DDP / FSDP2) lives in :mod:`pararnn.train.distributed`.
"""

from .context import ContextSolveInfo, context_parallel_solve
from .layer import ContextParallel, context_parallel_forward
from .lm import TRAIN_BOUNDARY_TOL, ContextMesh, context_layout, enable_context_parallel, init_context_mesh, time_chunk

__all__ = ["TRAIN_BOUNDARY_TOL", "ContextSolveInfo", "context_parallel_solve", "ContextParallel", "context_parallel_forward",
           "ContextMesh", "context_layout", "enable_context_parallel", "init_context_mesh", "time_chunk"]
