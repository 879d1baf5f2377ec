"""The fused gated RMSNorm (``pararnn.kernels.gated_norm``) against the module's plain ops,
eager and compiled, on a CUDA GPU, next to the memory floor.

    PYTHONPATH=src python benchmarks/gpu_gated_norm.py --out OUTDIR

Per shape B x T x N, as the ParaRNN block calls the norm under bf16 autocast (the cell's
output ``h`` bf16, the gate a bf16 chunk of the input projection's ``(B, T, 2N)`` output,
the weight float32) and pass (forward; forward + backward of h, the projection and the
weight), in one run:

* ``kernel``: :func:`~pararnn.kernels.gated_norm.gated_rms_norm` (one Triton kernel each way);
* ``plain``: ``F.rms_norm(h) * silu(gate)`` eagerly, what :class:`~pararnn.models.lm.GatedRMSNorm`
  ran before the kernel;
* ``plain compiled``: the same ops through ``torch.compile`` (inductor), as a compiled
  training step ran them;
* ``floor``: the bytes that must move at 4.2 TB/s (H200 HBM3e): h and gate read and y
  written forward; h, gate and dy read, dh and dgate written backward.

``gpu_us`` is the GPU's own time per call: the CUDA kernels (and copies) one call runs,
summed from a ``torch.profiler`` trace of 20 calls (what a CUDA-graphed training step
pays; at these shapes the host's time per call is larger); ``ms`` the median wall time of
20 calls between CUDA events (variants in turns). The gradient of the projection
includes autograd's concatenation of the gate's gradient with a zero one for the other
half, alike for every variant. ``--sweep`` also times the kernel's forward and backward
functions alone (CUDA-graph replays, no autograd) at each launch configuration of
:data:`SWEEP`, to pick ``gated_norm.CUDA_TILE_ELEMENTS`` and ``PROGRAMS_PER_SM``. Writes
OUTDIR/gpu_gated_norm.json (rewritten after every row).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from cuda_timing import graphed, interleaved_median_event_ms

# the LM's norms: `small` (state 1024) at T = 512 and 4096, `medium` (1536) at T = 512
SHAPES = [(32, 512, 1024), (4, 4096, 1024), (32, 512, 1536), (8, 2048, 2048)]
HBM_BYTES_PER_S = 4.2e12
EPS = 1e-5
PROFILED_CALLS = 20
# (CUDA_TILE_ELEMENTS, PROGRAMS_PER_SM) of --sweep; the first is the shipped one
SWEEP = [(1024, 8), (1024, 4), (1024, 6), (1024, 16), (512, 8), (2048, 8), (2048, 4)]


def floor_us(batch: int, steps: int, width: int, backward: bool) -> float:
    tensors = 8 if backward else 3  # + backward: h, gate, dy read; dh, dgate written
    return 1e6 * tensors * batch * steps * width * 2 / HBM_BYTES_PER_S


def plain(h, gate, weight):
    return F.rms_norm(h, (h.shape[-1],), weight.to(h.dtype), EPS) * F.silu(gate)


def variants() -> dict:
    from pararnn.kernels.gated_norm import gated_rms_norm

    return {"kernel": lambda h, gate, weight: gated_rms_norm(h, gate, weight, EPS),
            "plain": plain, "plain compiled": torch.compile(plain, dynamic=False)}


def call(fn, h, projected, weight, grad, backward: bool):
    """One call under autocast: the norm of ``h`` and the projection's second half, then
    with ``backward`` the gradients of h, the projection and the weight."""
    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = fn(h, projected.chunk(2, dim=-1)[1], weight)
        if backward:
            torch.autograd.grad(y, [h, projected, weight], grad)
    return run


def gpu_us(fn) -> float:
    """Microseconds of CUDA kernels and copies per call of ``fn`` (a profiled run of
    :data:`PROFILED_CALLS` calls after warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED_CALLS):
            fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    total = sum(e["dur"] for e in events if e.get("ph") == "X"
                and str(e.get("cat", "")).lower() in ("kernel", "gpu_memcpy", "gpu_memset"))
    return total / PROFILED_CALLS


def outputs(fn, h, projected, weight, grad) -> list[torch.Tensor]:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = fn(h, projected.chunk(2, dim=-1)[1], weight)
    return [y.float(), *(g.float() for g in torch.autograd.grad(y, [h, projected, weight], grad))]


def measure(shape) -> list[dict]:
    batch, steps, width = shape
    torch.manual_seed(0)
    h = torch.randn(batch, steps, width, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    projected = torch.randn(batch, steps, 2 * width, device="cuda", dtype=torch.bfloat16,
                            requires_grad=True)
    weight = (1 + 0.1 * torch.randn(width, device="cuda")).requires_grad_()
    grad = torch.randn(batch, steps, width, device="cuda", dtype=torch.bfloat16)
    fns = variants()
    reference = outputs(fns["plain"], h, projected, weight, grad)
    differences = {name: [(a - b).abs().max().item()
                          for a, b in zip(outputs(fn, h, projected, weight, grad), reference)]
                   for name, fn in fns.items() if name != "plain"}
    rows = []
    for backward in (False, True):
        names = list(fns)
        calls = [call(fns[n], h, projected, weight, grad, backward) for n in names]
        times = interleaved_median_event_ms(calls)
        rows.append({
            "shape": list(shape), "pass": "fwd+bwd" if backward else "fwd",
            "ms": dict(zip(names, times)), "gpu_us": {n: gpu_us(c) for n, c in zip(names, calls)},
            "floor_us": floor_us(batch, steps, width, backward),
            # largest |difference| to the plain path: (y, dh, dprojected, dweight)
            "max_abs_diff": differences,
        })
    return rows


def sweep(shape) -> dict:
    """The kernel's forward + backward functions at each configuration of :data:`SWEEP`,
    in turns, each replayed as a CUDA graph captured with its configuration set."""
    from pararnn.kernels import gated_norm

    batch, steps, width = shape
    h = torch.randn(batch, steps, width, device="cuda", dtype=torch.bfloat16)
    gate = torch.randn(batch, steps, 2 * width, device="cuda", dtype=torch.bfloat16)[..., width:]
    weight = torch.randn(width, device="cuda")
    grad = torch.randn(batch, steps, width, device="cuda", dtype=torch.bfloat16)

    def configured(launch):
        def run():
            gated_norm.CUDA_TILE_ELEMENTS, gated_norm.PROGRAMS_PER_SM = launch
            gated_norm.forward(h, gate, weight, EPS, torch.bfloat16)
            gated_norm.backward(h, gate, weight, EPS, grad)
        return run

    default = gated_norm.CUDA_TILE_ELEMENTS, gated_norm.PROGRAMS_PER_SM
    try:
        times = interleaved_median_event_ms([graphed(configured(launch)) for launch in SWEEP])
    finally:
        gated_norm.CUDA_TILE_ELEMENTS, gated_norm.PROGRAMS_PER_SM = default
    return {"shape": list(shape), "floor_us": floor_us(batch, steps, width, True),
            "us": [{"tile_elements": e, "programs_per_sm": p, "us": 1e3 * ms}
                   for (e, p), ms in zip(SWEEP, times)]}


def print_row(row: dict) -> None:
    gpu = "  ".join(f"{name} {us:.1f}" for name, us in row["gpu_us"].items())
    wall = "  ".join(f"{name} {ms:.4f}" for name, ms in row["ms"].items())
    print(f"{'x'.join(map(str, row['shape'])):>14} {row['pass']:>7}: GPU us {gpu}  (floor "
          f"{row['floor_us']:.1f}) | wall ms {wall}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_gated_norm.json")
    parser.add_argument("--sweep", action="store_true",
                        help="also time the kernel at each launch configuration of SWEEP")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_gated_norm.py needs a CUDA device")
    import triton

    args.out.mkdir(parents=True, exist_ok=True)
    torch._dynamo.config.cache_size_limit = 64  # one compiled plain path per shape
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "hbm_bytes_per_s": HBM_BYTES_PER_S, "rows": [], "sweep": []}
    for shape in SHAPES:
        for row in measure(shape):
            print_row(row)
            result["rows"].append(row)
            (args.out / "gpu_gated_norm.json").write_text(json.dumps(result, indent=1))
    for shape in SHAPES if args.sweep else ():
        row = sweep(shape)
        print(f"{'x'.join(map(str, shape)):>14} sweep fwd+bwd us: " + "  ".join(
            f"{t['tile_elements']}/{t['programs_per_sm']} {t['us']:.1f}" for t in row["us"])
            + f"  (floor {row['floor_us']:.1f})", flush=True)
        result["sweep"].append(row)
        (args.out / "gpu_gated_norm.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
