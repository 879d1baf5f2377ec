"""State-tracking benchmarks of the ParaRNN paper (Table 1) and two harder tasks.

>>> from pararnn.synthetic import RunConfig, run
>>> result = run(RunConfig(task="parity", model="paragru", steps=200))

Tasks (:mod:`.tasks`): parity, mqar, khop, modcount, s5. Models (:mod:`.models`): the
paper's one-layer ParaGRU / ParaLSTM / Transformer / Mamba2. The command line is
``pararnn synthetic`` (see ``pararnn synthetic --help``).
"""

from .models import PAPER_ACCURACY, build_synthetic_model, synthetic_config
from .report import markdown_table, write_outputs
from .runner import RunConfig, evaluate, run
from .tasks import TASKS, get_task

__all__ = ["PAPER_ACCURACY", "TASKS", "RunConfig", "build_synthetic_model", "evaluate", "get_task",
           "markdown_table", "run", "synthetic_config", "write_outputs"]
