"""pararnn: nonlinear RNNs applied in parallel along the sequence (Newton + parallel scan)."""

from .cells import Cell, ParaGRUCell, ParaLSTMCell
from .layers import RNN, MultiHeadProjection, ParaGRU, ParaLSTM
from .solver import NewtonConfig, NewtonConvergenceError, SolveInfo, solve
from .structure import JacobianStructure

__version__ = "0.1.0"

__all__ = [
    "Cell", "ParaGRUCell", "ParaLSTMCell",
    "RNN", "ParaGRU", "ParaLSTM", "MultiHeadProjection",
    "NewtonConfig", "NewtonConvergenceError", "SolveInfo", "solve",
    "JacobianStructure",
]
