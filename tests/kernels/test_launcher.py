"""The fused kernels launch plainly on plain tensors (an eager launch through
``wrap_triton`` dispatches a higher-order op: host time on every call) and through
``wrap_triton`` on a trace's tensors, so that inductor sees the launch. Checked with
compiled (not interpreted) Triton functions, in a subprocess without TRITON_INTERPRET:
under the interpreter ``wrap_triton`` returns the kernel itself either way."""

import subprocess
import sys

import pytest
from triton_subprocess import compiling_env

pytest.importorskip("triton")

CHECK = """
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from pararnn.kernels import paragru
from pararnn.kernels._fused_common import launcher

kernel = paragru._gru_fwd_kernel
assert type(kernel).__name__ == "JITFunction", type(kernel)
assert launcher(kernel, torch.empty(2)) is kernel
with FakeTensorMode():
    fake = torch.empty(2)
assert launcher(kernel, fake) is not kernel
assert type(launcher(kernel, fake)).__name__ == "TraceableTritonKernelWrapper"
print("ok")
"""


def test_plain_tensors_launch_plainly_and_trace_tensors_through_wrap_triton():
    done = subprocess.run([sys.executable, "-c", CHECK], env=compiling_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
