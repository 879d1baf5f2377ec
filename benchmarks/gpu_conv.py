"""The fused causal depthwise conv + SiLU (``pararnn.kernels.causal_conv``) against the
module's plain PyTorch path, on a CUDA GPU, next to the memory floor.

    PYTHONPATH=src python benchmarks/gpu_conv.py --out OUTDIR

Per shape B x T x C, dtype (bf16: bf16 activations with float32 parameters, as under
autocast; fp32) and pass (forward; forward + backward of x, weight and bias), in one run:

* ``kernel``: :func:`~pararnn.kernels.causal_conv.causal_conv1d` (one Triton kernel each way);
* ``plain``: what :class:`~pararnn.models.lm.CausalConv1d` ran before it, eagerly:
  transpose, zero window, grouped ``F.conv1d`` (cuDNN), transpose, SiLU;
* ``plain compiled``: the same ops through ``torch.compile`` (inductor around cuDNN), as
  a compiled training step runs them (``--no-compile`` skips it);
* ``floor``: the bytes that must move at 4.2 TB/s (H200 HBM3e): x read and y written
  forward; x and dy read and dx written backward (parameters are negligible).

Times are medians of 20 calls (CUDA events, 5 warm-up calls, variants timed in turns), as
called from Python (``ms``: at these shapes mostly the host's time) and, for the kernel,
its forward and backward functions replayed as a CUDA graph (``graph_ms``: the GPU's time,
what a compiled or graphed training step sees; called directly, without autograd, whose
gradient accumulators a capture on another stream trips over); ``kernel_x_floor``
compares the graphed kernel with the floor.
Each row also records the largest difference between the kernel's and the plain output
and gradients. ``--sweep`` also times the kernel alone at each launch configuration of
:data:`SWEEP` (forward and backward tiles ``(time block, channel block, warps)`` and the
backward's programs per SM), to pick ``causal_conv.CUDA_TILE``, ``CUDA_BWD_TILE`` and
``PROGRAMS_PER_SM``. Writes
OUTDIR/gpu_conv.json (rewritten after every row).
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from cuda_timing import graphed, interleaved_median_event_ms

SHAPES = [(32, 512, 1024), (32, 512, 1152), (4, 4096, 1024), (8, 2048, 2304)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
KERNEL_SIZE = 4
HBM_BYTES_PER_S = 4.2e12
# (CUDA_TILE, CUDA_BWD_TILE, PROGRAMS_PER_SM) launch configurations of --sweep, tiles as
# (time block, channel block, warps, load stages); the first is the default
SWEEP = [((8, 128, 2, 3), (8, 128, 2, 3), 16), ((8, 128, 2, 2), (8, 128, 2, 2), 16),
         ((16, 128, 2, 2), (16, 128, 2, 2), 16), ((8, 64, 1, 2), (8, 64, 1, 2), 32),
         ((8, 128, 2, 2), (8, 128, 2, 2), 8), ((8, 256, 4, 2), (8, 256, 4, 2), 16),
         ((8, 128, 2, 1), (8, 128, 2, 1), 32), ((4, 128, 2, 3), (4, 128, 2, 3), 16)]


def floor_ms(batch: int, steps: int, channels: int, dtype: torch.dtype, backward: bool) -> float:
    tensors = 5 if backward else 2  # forward: x, y; backward: x, dy, dx
    return 1e3 * tensors * batch * steps * channels * dtype.itemsize / HBM_BYTES_PER_S


def plain_conv_silu(conv, x):
    """CausalConv1d's plain path (the ops it ran before the kernel, and still runs with a cache)."""
    return F.silu(conv._conv(x, None, "conv"))


def variants(conv, compile_plain: bool) -> dict:
    from pararnn.kernels.causal_conv import causal_conv1d

    found = {"kernel": lambda x: causal_conv1d(x, conv.weight, conv.bias, True),
             "plain": lambda x: plain_conv_silu(conv, x)}
    if compile_plain:
        found["plain compiled"] = torch.compile(lambda x: plain_conv_silu(conv, x), dynamic=False)
    return found


def call(fn, x, grad, params, backward: bool):
    """One timed call: ``fn(x)``, then with ``backward`` the gradients of x, weight, bias."""
    def run():
        y = fn(x)
        if backward:
            torch.autograd.grad(y, [x, *params], grad)
    return run


def kernel_call(x, weight, bias, grad, backward: bool):
    """One call of the kernel's forward (and backward) functions, without autograd."""
    from pararnn.kernels import causal_conv

    x, weight, bias = x.detach(), weight.detach(), bias.detach()

    def run():
        causal_conv.forward(x, weight, bias, True)
        if backward:
            causal_conv.backward(x, weight, bias, grad, True)
    return run


def outputs(fn, x, grad, params) -> list[torch.Tensor]:
    """The output and the gradients of x, weight and bias, in float32."""
    y = fn(x)
    return [y.float(), *(g.float() for g in torch.autograd.grad(y, [x, *params], grad))]


def measure(shape, dtype_name: str, compile_plain: bool) -> list[dict]:
    from pararnn.models.lm import CausalConv1d

    batch, steps, channels = shape
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    conv = CausalConv1d(channels, KERNEL_SIZE).cuda()
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(batch, steps, channels, device="cuda", dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, steps, channels, device="cuda", dtype=dtype)
    fns = variants(conv, compile_plain)
    params = list(conv.parameters())
    reference = outputs(fns["plain"], x, grad, params)
    differences = {name: [(a - b).abs().max().item() for a, b in zip(outputs(fn, x, grad, params), reference)]
                   for name, fn in fns.items() if name != "plain"}
    rows = []
    for backward in (False, True):
        names = list(fns)
        times = interleaved_median_event_ms([call(fns[n], x, grad, params, backward) for n in names])
        graph_times = interleaved_median_event_ms(
            [graphed(kernel_call(x, conv.weight, conv.bias, grad, backward))])
        floor = floor_ms(batch, steps, channels, dtype, backward)
        rows.append({
            "shape": list(shape), "dtype": dtype_name, "pass": "fwd+bwd" if backward else "fwd",
            "ms": dict(zip(names, times)), "graph_ms": {"kernel": graph_times[0]},
            "floor_ms": floor, "kernel_x_floor": graph_times[0] / floor,
            # largest |difference| to the plain path: (y, dx, dweight, dbias)
            "max_abs_diff": differences,
        })
    return rows


def with_launch(fn, launch):
    """``fn`` run with the kernels' launch configuration set to ``launch``, an entry of
    :data:`SWEEP`."""
    from pararnn.kernels import causal_conv

    def run():
        causal_conv.CUDA_TILE, causal_conv.CUDA_BWD_TILE, causal_conv.PROGRAMS_PER_SM = launch
        fn()
    return run


def sweep(shape, dtype_name: str) -> list[dict]:
    """The kernel alone at each launch configuration of :data:`SWEEP`, in turns, each
    replayed as a CUDA graph captured with its configuration set."""
    from pararnn.kernels import causal_conv

    batch, steps, channels = shape
    dtype = DTYPES[dtype_name]
    weight = torch.randn(channels, 1, KERNEL_SIZE, device="cuda")
    bias = torch.randn(channels, device="cuda")
    x = torch.randn(batch, steps, channels, device="cuda", dtype=dtype)
    grad = torch.randn(batch, steps, channels, device="cuda", dtype=dtype)
    default = causal_conv.CUDA_TILE, causal_conv.CUDA_BWD_TILE, causal_conv.PROGRAMS_PER_SM
    rows = []
    try:
        for backward in (False, True):
            times = interleaved_median_event_ms(
                [graphed(with_launch(kernel_call(x, weight, bias, grad, backward), launch))
                 for launch in SWEEP])
            floor = floor_ms(batch, steps, channels, dtype, backward)
            rows.append({"shape": list(shape), "dtype": dtype_name, "pass": "fwd+bwd" if backward else "fwd",
                         "floor_ms": floor,
                         "ms": [{"tile": list(tile), "bwd_tile": list(bwd_tile), "programs_per_sm": programs,
                                 "ms": ms} for (tile, bwd_tile, programs), ms in zip(SWEEP, times)]})
    finally:
        causal_conv.CUDA_TILE, causal_conv.CUDA_BWD_TILE, causal_conv.PROGRAMS_PER_SM = default
    return rows


def print_sweep_row(row: dict) -> None:
    times = "  ".join(f"{'x'.join(map(str, t['tile']))},{'x'.join(map(str, t['bwd_tile']))}/{t['programs_per_sm']} "
                      f"{t['ms']:.4f}" for t in row["ms"])
    print(f"{'x'.join(map(str, row['shape'])):>14} {row['dtype']} {row['pass']:>7} sweep: {times}  "
          f"(floor {row['floor_ms']:.4f})", flush=True)


def print_row(row: dict) -> None:
    times = "  ".join(f"{name} {ms:.4f}" for name, ms in row["ms"].items())
    graphs = "  ".join(f"{name} {ms:.4f}" for name, ms in row["graph_ms"].items())
    print(f"{'x'.join(map(str, row['shape'])):>14} {row['dtype']} {row['pass']:>7}: {times} | graphs: "
          f"{graphs}  floor {row['floor_ms']:.4f} ms (graphed kernel {row['kernel_x_floor']:.1f}x floor)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_conv.json")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile'd plain path (saves its compile time)")
    parser.add_argument("--sweep", action="store_true",
                        help="also time the kernel at each launch configuration of SWEEP")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_conv.py needs a CUDA device")
    import triton

    args.out.mkdir(parents=True, exist_ok=True)
    torch._dynamo.config.cache_size_limit = 64  # one compiled plain path per shape and dtype
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "kernel_size": KERNEL_SIZE, "hbm_bytes_per_s": HBM_BYTES_PER_S, "rows": [], "sweep": []}
    for shape in SHAPES:
        for dtype_name in DTYPES:
            for row in measure(shape, dtype_name, not args.no_compile):
                print_row(row)
                result["rows"].append(row)
                (args.out / "gpu_conv.json").write_text(json.dumps(result, indent=1))
    for shape in SHAPES if args.sweep else ():
        for dtype_name in DTYPES:
            for row in sweep(shape, dtype_name):
                print_sweep_row(row)
                result["sweep"].append(row)
                (args.out / "gpu_conv.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
