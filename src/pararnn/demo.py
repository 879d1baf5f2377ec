"""Demo: ParaGRU applied sequentially vs in parallel on this machine.

``python -m pararnn.demo [--batch 4] [--steps 2048] [--hidden 256] [--device cpu]``
prints the time of each mode (forward, and forward + backward), the speedup, and the
largest difference between the two outputs and gradients.
"""

from __future__ import annotations

import argparse
import time

import torch

from .layers import ParaGRU


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds (after one warm-up call)."""
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
    return sorted(times)[len(times) // 2]


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

        result[f"{mode}_fwd_s"] = median_time(forward, repeats)
        result[f"{mode}_fwdbwd_s"] = median_time(forward_backward, repeats)
        out = forward_backward()
        outputs[mode] = (out.detach(), x.grad.clone(), layer.projection.weight.grad.clone())
    seq, par = outputs["sequential"], outputs["parallel"]
    result["max_abs_diff_output"] = (seq[0] - par[0]).abs().max().item()
    result["max_rel_diff_grads"] = max(
        ((a - b).norm() / b.norm()).item() for a, b in zip(par[1:], seq[1:]))
    result["speedup_fwd"] = result["sequential_fwd_s"] / result["parallel_fwd_s"]
    result["speedup_fwdbwd"] = result["sequential_fwdbwd_s"] / result["parallel_fwdbwd_s"]
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    r = compare(args.batch, args.steps, args.hidden, device=args.device)
    print(f"ParaGRU B={args.batch} T={args.steps} N={args.hidden} on {args.device} "
          f"(float32, 3 Newton iterations)")
    print(f"{'':20s}{'sequential':>12s}{'parallel':>12s}{'speedup':>10s}")
    for key, label in (("fwd", "forward"), ("fwdbwd", "forward+backward")):
        print(f"{label:20s}{r[f'sequential_{key}_s'] * 1e3:10.1f}ms{r[f'parallel_{key}_s'] * 1e3:10.1f}ms"
              f"{r[f'speedup_{key}']:9.1f}x")
    print(f"max |parallel - sequential| output: {r['max_abs_diff_output']:.2e}; "
          f"gradients (relative): {r['max_rel_diff_grads']:.2e}")


if __name__ == "__main__":
    main()
