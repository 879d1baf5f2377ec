"""The environment of a test's subprocess that compiles Triton kernels."""

import os
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def compiling_env() -> dict:
    """This process's environment without ``TRITON_INTERPRET`` (the kernel tests set it on
    a machine without CUDA, and under it ``triton.jit`` makes interpreted functions, which
    neither compile nor go through torch's analysis of Triton kernels), with the source
    tree first on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH", "")]))
    return env
