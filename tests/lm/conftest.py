"""Without a GPU, the fused ParaGRU/ParaLSTM solves of the LM tests that force them
(``backend="triton"``) run in Triton's interpreter. Triton decides that when it decorates
a kernel, its own when it is first imported (test modules may import it indirectly), so
the variable is set here, before this folder's test modules are collected, as
``tests/kernels/conftest.py`` does. ``backend="auto"`` ignores it: on a CPU it stays on
the PyTorch path."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
