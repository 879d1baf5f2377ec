"""Demo: ParaGRU applied sequentially vs in parallel on this machine.

``python -m pararnn.demo [--batch 4] [--steps 1024] [--hidden 256] [--repeats 3] [--device cpu]``
prints the wall time of each mode (forward, and forward + backward), the ratio of the two
where the runs tell them apart, and the largest difference between the two outputs and
gradients. It says what was timed (repeats, threads, the machine's load), since timings on
a shared machine vary from run to run.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from .layers import ParaGRU


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds (after one warm-up call)."""
    times = wall_times(fn, repeats)
    return times[len(times) // 2]


def wall_times(fn, repeats: int) -> list[float]:
    """Sorted wall times of ``repeats`` calls of ``fn()`` in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)


def compare(batch: int, steps: int, hidden: int, *, input_size: int = 64, device="cpu",
            repeats: int = 3, seed: int = 0) -> dict:
    """Time and check sequential vs parallel ParaGRU on one shape (float32)."""
    torch.manual_seed(seed)
    layer = ParaGRU(input_size, hidden, recurrent_clip=0.5, device=device)
    x = torch.randn(batch, steps, input_size, device=device, requires_grad=True)
    result = {"batch": batch, "steps": steps, "hidden": hidden}
    outputs = {}
    for mode in ("sequential", "parallel"):
        layer.mode = mode

        def forward():
            with torch.no_grad():
                return layer(x)[0]

        def forward_backward():
            x.grad = None
            layer.zero_grad()
            out = layer(x)[0]
            out.square().mean().backward()
            return out

        for key, fn in (("fwd", forward), ("fwdbwd", forward_backward)):
            times = wall_times(fn, repeats)
            result[f"{mode}_{key}_s"] = times[len(times) // 2]
            result[f"{mode}_{key}_range_s"] = (times[0], times[-1])
        out = forward_backward()
        outputs[mode] = (out.detach(), x.grad.clone(), layer.projection.weight.grad.clone())
    seq, par = outputs["sequential"], outputs["parallel"]
    result["max_abs_diff_output"] = (seq[0] - par[0]).abs().max().item()
    result["max_rel_diff_grads"] = max(
        ((a - b).norm() / b.norm()).item() for a, b in zip(par[1:], seq[1:]))
    result["speedup_fwd"] = result["sequential_fwd_s"] / result["parallel_fwd_s"]
    result["speedup_fwdbwd"] = result["sequential_fwdbwd_s"] / result["parallel_fwdbwd_s"]
    return result


def _ratio_text(r: dict, key: str) -> str:
    """sequential / parallel time, or why there is none: when the slowest run of one mode
    overlaps the fastest of the other, the machine's noise hides which one is faster."""
    seq, par = r[f"sequential_{key}_range_s"], r[f"parallel_{key}_range_s"]
    if seq[0] <= par[1] and par[0] <= seq[1]:
        return "runs overlap"
    ratio = r[f"speedup_{key}"]
    return f"{ratio:.2g}x faster" if ratio >= 1 else f"{1 / ratio:.2g}x slower"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each mode (after a warm-up)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    r = compare(args.batch, args.steps, args.hidden, device=args.device, repeats=args.repeats)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cores = os.cpu_count()
    print(f"ParaGRU, batch {args.batch} x {args.steps} steps x {args.hidden} hidden, float32, on "
          f"{args.device}; the parallel mode runs 3 Newton iterations")
    print(f"wall time of one layer call: median of {args.repeats} runs after a warm-up "
          f"(fastest-slowest in brackets); torch threads: {torch.get_num_threads()}")
    print(f"{'':18s}{'sequential':>26s}{'parallel':>26s}   parallel is")
    for key, label in (("fwd", "forward"), ("fwdbwd", "forward+backward")):
        cells = []
        for mode in ("sequential", "parallel"):
            low, high = r[f"{mode}_{key}_range_s"]
            cells.append(f"{r[f'{mode}_{key}_s'] * 1e3:.1f} ms ({low * 1e3:.0f}-{high * 1e3:.0f})")
        print(f"{label:18s}{cells[0]:>26s}{cells[1]:>26s}   {_ratio_text(r, key)}")
    print(f"max |parallel - sequential| output: {r['max_abs_diff_output']:.2e}; "
          f"gradients (relative): {r['max_rel_diff_grads']:.2e}")
    if load is not None:
        busy = load_after > 0.75 * cores if cores else False
        print(f"load average {load:.1f} before, {load_after:.1f} after, on {cores} CPU cores"
              + (": other processes share this machine, so these times are noisy" if busy else ""))
    print("Timings on a shared machine vary from run to run. The parallel solve does more arithmetic "
          "than the loop (each Newton iteration is a scan over all steps); it pays off where many "
          "cores run it at once, as on a GPU (BENCHMARKS.md).")


if __name__ == "__main__":
    main()
