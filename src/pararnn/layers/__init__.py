"""nn.Modules users hold: ``RNN(cell)``, ``ParaGRU``, ``ParaLSTM``."""

from .projection import MultiHeadProjection
from .projected import ParaGRU, ParaLSTM
from .rnn import RNN

__all__ = ["RNN", "ParaGRU", "ParaLSTM", "MultiHeadProjection"]
