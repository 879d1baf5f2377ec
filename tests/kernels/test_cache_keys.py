"""torch.compile's caches must know every Triton kernel a fused op launches: the
AOTAutograd cache keys a compiled graph by those kernels' source, and one it does not
know of is served from a warm cache after it changed (a new pararnn with an old cache ran
the old kernels). Checked in a subprocess that registers the ops as ``triton_op`` (the
GPU registration; the interpreter the kernel tests run under registers opaque ops)."""

import json
import subprocess
import sys

import pytest

from triton_subprocess import compiling_env

LAUNCHED = {  # what each op's code launches (see the launcher() calls of each module)
    "paragru_forward": {"_gru_fwd_kernel", "_boundary_diag_kernel"},
    "paragru_backward": {"_gru_bwd_kernel", "_boundary_diag_kernel"},
    "paralstm_forward": {"_lstm_fwd_kernel", "_boundary_2x2_kernel"},
    "paralstm_backward": {"_lstm_bwd_kernel", "_boundary_2x2_kernel"},
    "causal_conv1d": {"_conv1d_fwd_kernel"},
    "causal_conv1d_backward": {"_conv1d_bwd_kernel"},
    "gated_rms_norm": {"_gated_norm_fwd_kernel"},
    "gated_rms_norm_backward": {"_gated_norm_bwd_kernel"},
}

PROBE = """
import json, sys
import torch
triton = getattr(torch._library, "triton", None)
if triton is None or not hasattr(triton, "get_triton_kernels_for_op"):
    print(json.dumps(None)); sys.exit()
import pararnn.kernels.paragru, pararnn.kernels.paralstm, pararnn.kernels.causal_conv
import pararnn.kernels.gated_norm
ops = json.loads(sys.argv[1])
print(json.dumps({op: [k.fn.__name__ for k in triton.get_triton_kernels_for_op("pararnn::" + op)]
                  for op in ops}))
"""


def test_every_fused_op_declares_the_kernels_it_launches():
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(sorted(LAUNCHED))],
                         env=compiling_env(), check=True, capture_output=True, text=True)
    known = json.loads(out.stdout.strip().splitlines()[-1])
    if known is None:
        pytest.skip("this torch has no triton_op kernel registry")
    for op, kernels in LAUNCHED.items():
        assert kernels <= set(known[op]), f"{op}: torch.compile's caches see {known[op]}"
