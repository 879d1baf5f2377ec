"""Recurrent cells: the step ``h_t = f(h_{t-1}, x_t)`` and the structure of its Jacobian."""

from .base import Cell
from .gru import ParaGRUCell
from .lstm import ParaLSTMCell

__all__ = ["Cell", "ParaGRUCell", "ParaLSTMCell"]
