"""pararnn: nonlinear RNNs applied in parallel along the sequence (Newton + parallel scan)."""

from ._openmp import shorten_spin_wait

shorten_spin_wait()  # before the imports below load torch and its OpenMP runtime

from .cells import Cell, ParaGRUCell, ParaLSTMCell  # noqa: E402
from .layers import RNN, MultiHeadProjection, ParaGRU, ParaLSTM  # noqa: E402
from .solver import NewtonConfig, NewtonConvergenceError, SolveInfo, solve  # noqa: E402
from .structure import JacobianStructure  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Cell", "ParaGRUCell", "ParaLSTMCell",
    "RNN", "ParaGRU", "ParaLSTM", "MultiHeadProjection",
    "NewtonConfig", "NewtonConvergenceError", "SolveInfo", "solve",
    "JacobianStructure",
]
