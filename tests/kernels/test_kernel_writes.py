"""What ``torch.compile`` takes each fused kernel to write. Inductor reads a user kernel's
writes off its Triton IR (torch's mutation analysis follows a stored pointer back through
every argument of each jit function that computed it) and copies every input it takes as
written before each launch: one false write of the pre-activations cost a full-size copy
per layer and step of the compiled LM (0.33 ms per step at T = 512 on the H200).

The ops run here with a recorder around each launch (the argument shapes and what the
launch changed); a subprocess without the interpreter then runs torch's analysis on the
compiled-Triton kernels with those arguments. Each kernel must be seen writing every
argument it changed and none of its inputs."""

import inspect
import json
import subprocess
import sys

import pytest
import torch
from triton_subprocess import compiling_env

triton = pytest.importorskip("triton")

from pararnn.kernels import (_fused_common, causal_conv, gated_norm,  # noqa: E402
                             interpreter_enabled, paragru, paralstm)
from pararnn.layout import head_major  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
if not CUDA and not interpreter_enabled():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

# what each kernel reads and must never be taken to write
INPUTS = {
    "_gru_fwd_kernel": {"PRE", "AW", "BIAS", "H0", "RST"},
    "_gru_bwd_kernel": {"PRE", "AW", "BIAS", "H0", "RST", "HS", "GH"},
    "_lstm_fwd_kernel": {"PRE", "AW", "PW", "BIAS", "H0", "RST"},
    "_lstm_bwd_kernel": {"PRE", "AW", "PW", "BIAS", "H0", "RST", "HS", "GH"},
    "_boundary_diag_kernel": {"E", "A", "S"},
    "_boundary_2x2_kernel": {"E", "A", "S"},
    "_conv1d_fwd_kernel": {"X", "W", "BIAS"},
    "_conv1d_bwd_kernel": {"X", "W", "BIAS", "G"},
    "_gated_norm_fwd_kernel": {"H", "G", "W"},
    "_gated_norm_bwd_kernel": {"H", "G", "W", "DY"},
}

ANALYSE = """
import importlib, json, logging, sys
import torch, triton
from torch._higher_order_ops import triton_kernel_wrap as wrap

if not torch.cuda.is_available():
    from triton.backends.compiler import GPUTarget

    class LoweringTarget:  # the analysis lowers to Triton IR, which needs a target only
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    triton.runtime.driver.set_active(LoweringTarget())


class Failed(logging.Handler):  # torch falls back to "every input is written" with a warning
    def emit(self, record):
        sys.exit("the analysis failed: " + record.getMessage())


logging.getLogger(wrap.__name__).addHandler(Failed(logging.WARNING))


def build(value):
    if isinstance(value, dict) and "triton_dtype" in value:
        return triton.language.dtype(value["triton_dtype"])
    if isinstance(value, dict):
        dtype = getattr(torch, value["dtype"])
        return torch.empty_strided(value["shape"], value["stride"], dtype=dtype)
    return value


writes = []
for launch in json.load(open(sys.argv[1])):
    kernel = getattr(importlib.import_module(launch["module"]), launch["kernel"])
    kwargs = {name: build(value) for name, value in launch["args"].items()}
    if hasattr(wrap, "identify_accessed_tensors"):
        accesses = wrap.identify_accessed_tensors(kernel, kwargs, {})
        found = [dep.name for dep in accesses.read_writes.writes]
    else:
        found = wrap.identify_mutated_tensors(kernel, kwargs, {})
    writes.append(sorted(found))
print(json.dumps(writes))
"""


def _describe(value):
    if torch.is_tensor(value):
        return {"shape": list(value.shape), "stride": list(value.stride()),
                "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, triton.language.dtype):  # a constexpr math dtype
        return {"triton_dtype": value.name}
    return value


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().contiguous().view(-1).view(torch.uint8)


class _Recorder:
    """Stands in for :func:`._fused_common.launcher`: launches as it does and records each
    launch's kernel, its arguments by name and the tensors the launch changed (bitwise)."""

    def __init__(self, launcher):
        self.launcher, self.launches = launcher, []

    def __call__(self, kernel, operand):
        return _RecordedKernel(kernel, self.launcher(kernel, operand), self.launches)


class _RecordedKernel:
    """``kernel[grid](...)`` through ``launch`` (the launcher's), appending a record to
    ``launches``."""

    def __init__(self, kernel, launch, launches):
        self.kernel, self.launch, self.launches = kernel, launch, launches

    def __getitem__(self, grid):
        signature = inspect.signature(self.kernel.fn)

        def start(*args, **kwargs):
            named = signature.bind_partial(
                *args, **{k: v for k, v in kwargs.items() if k in signature.parameters}).arguments
            before = {k: _bits(v) for k, v in named.items() if torch.is_tensor(v)}
            self.launch[grid](*args, **kwargs)
            changed = sorted(k for k, bits in before.items()
                             if not torch.equal(_bits(named[k]), bits))
            fn = self.kernel.fn
            self.launches.append({"module": fn.__module__, "kernel": fn.__name__,
                                  "args": {k: _describe(v) for k, v in named.items()},
                                  "changed": changed})
        return start


def _run_every_kernel():
    """Forward and backward of both cells (head-major pre-activations, bias, h0, resets, a
    segmented plan: its boundary solves too; with the layer's output written as well) and of the
    SiLU conv."""
    torch.manual_seed(0)
    batch, steps, n, heads = 2, 6, 32, 2  # two segments of the plan below
    for kernels, width in ((paragru, 1), (paralstm, 2)):
        a = (torch.randn(3, n) * 0.6).to(DEVICE)
        extra = (torch.randn(2, n).mul(0.3).to(DEVICE),) if kernels is paralstm else ()
        bias = torch.randn(3, n).mul(0.3).to(DEVICE)
        pre = head_major(torch.randn(batch, steps, 3 * n, device=DEVICE), heads, 3)
        h0 = torch.randn(batch, width * n, device=DEVICE)
        resets = (torch.rand(batch, steps) < 0.2).to(DEVICE)
        plan = dict(seg_len=4, warmup=2, block_n=16)
        # one boundary round: the walk, the boundary solve and the correction walk (further
        # rounds repeat these launches with the same arguments)
        states, _ = kernels.forward(pre, a, *extra, h0, resets, 1, bias=bias, **plan)
        grad = torch.randn_like(states)
        kernels.backward(pre, a, *extra, h0, resets, states, grad, bias=bias, **plan)
        # a layer's launches: its output (ParaLSTM's h alone, ParaGRU's bf16 copy of the
        # states) written by the walk as well, and that output's gradient read
        hidden = torch.empty(batch, steps, n, device=DEVICE, dtype=pre.dtype)
        kernels.forward(pre, a, *extra, h0, resets, 1, bias=bias, hidden_out=hidden, **plan)
        kernels.backward(pre, a, *extra, h0, resets, states, torch.randn_like(hidden),
                         bias=bias, **plan)
    x = torch.randn(batch, steps, 24, device=DEVICE)
    weight, conv_bias = torch.randn(24, 4, device=DEVICE), torch.randn(24, device=DEVICE)
    y = causal_conv.forward(x, weight, conv_bias, silu=True)
    causal_conv.backward(x, weight, conv_bias, torch.randn_like(y), silu=True)
    gate, norm_weight = torch.randn_like(x), torch.randn(24, device=DEVICE)
    y = gated_norm.forward(x, gate, norm_weight, 1e-5, x.dtype)
    gated_norm.backward(x, gate, norm_weight, 1e-5, torch.randn_like(y))


def test_compile_sees_each_kernel_write_what_it_changes_and_none_of_its_inputs(monkeypatch,
                                                                               tmp_path):
    recorder = _Recorder(_fused_common.launcher)
    for module in (_fused_common, paragru, paralstm, causal_conv, gated_norm):
        monkeypatch.setattr(module, "launcher", recorder)
    _run_every_kernel()
    launches = recorder.launches
    assert {launch["kernel"] for launch in launches} == set(INPUTS)

    path = tmp_path / "launches.json"
    path.write_text(json.dumps(launches))
    done = subprocess.run([sys.executable, "-c", ANALYSE, str(path)], env=compiling_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    for launch, writes in zip(launches, seen):
        name = launch["kernel"]
        assert set(launch["changed"]) <= set(writes), (
            f"{name} changed {launch['changed']}, analysed {writes}")
        assert not set(writes) & INPUTS[name], f"{name} is taken to write its inputs: {writes}"


def test_recorder_reports_what_a_launch_changed(monkeypatch):
    # the conv forward writes Y and leaves its inputs as they were
    recorder = _Recorder(_fused_common.launcher)
    monkeypatch.setattr(causal_conv, "launcher", recorder)
    x = torch.randn(1, 5, 8, device=DEVICE)
    causal_conv.forward(x, torch.randn(8, 4, device=DEVICE), torch.randn(8, device=DEVICE))
    (launch,) = recorder.launches
    assert launch["kernel"] == "_conv1d_fwd_kernel" and launch["changed"] == ["Y"]
