"""Kernel tests run on the GPU when there is one, else through Triton's CPU interpreter.

``triton.jit`` picks the interpreter when a kernel is decorated, so the variable must be
set before any kernel module is imported: this conftest loads before the test modules
of this folder are collected.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
