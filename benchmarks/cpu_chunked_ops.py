"""The measurements behind ``pararnn.models.cpu_chunked``, on one CPU thread:

* an elementwise add over tensors of growing size: per element, whole ``(8, 128, 512)``
  activations (2 MiB) cost several times what chunks that stay in L2 cost;
* forward+backward of the causal conv + SiLU and of the gated RMSNorm at the ``tiny`` LM's
  shape (8 x 128 x 512, inputs strided as the mixer passes them): the plain ops against the
  chunked autograd Functions for several chunk sizes.

    python benchmarks/cpu_chunked_ops.py

Minimum process CPU time of ``--repeats`` calls after a warm-up.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from pararnn.models import cpu_chunked
from pararnn.models.lm import CausalConv1d, GatedRMSNorm


def min_cpu_us(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--shape", type=int, nargs=3, default=[8, 128, 512], metavar=("B", "T", "C"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    print("add out=, per element:")
    for size in (1 << 14, 1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20):
        a, b, out = torch.randn(size), torch.randn(size), torch.empty(size)
        us = min_cpu_us(lambda: torch.add(a, b, out=out), args.repeats * 10)
        print(f"  {size:8d} elements ({3 * 4 * size >> 10:5d} KiB touched): {us:8.1f} us, "
              f"{us * 1e3 / size:.3f} ns per element")

    batch, steps, channels = args.shape
    conv, norm = CausalConv1d(channels, 4), GatedRMSNorm(channels)
    both = torch.randn(batch, steps, 2 * channels, requires_grad=True)  # (u | gate), as in_proj gives
    y = torch.randn(batch, steps, channels, requires_grad=True)
    cotangent = torch.randn(batch, steps, channels)
    cases = {
        "conv + SiLU": (lambda: F.silu(conv._conv(both[..., :channels], None, "conv")),
                        lambda: conv(both[..., :channels], silu=True)),
        "gated RMSNorm": (lambda: F.rms_norm(y, (channels,), norm.weight, norm.eps)
                          * F.silu(both[..., channels:]),
                          lambda: norm(y, both[..., channels:])),
    }
    default = cpu_chunked.CHUNK_ELEMENTS
    for name, (plain, chunked) in cases.items():
        def forward_backward(fn):
            return lambda: fn().backward(cotangent)

        print(f"{name}, forward+backward: plain ops {min_cpu_us(forward_backward(plain), args.repeats) / 1e3:.2f} ms")
        for log2 in (14, 15, 16, 17, 20):
            cpu_chunked.CHUNK_ELEMENTS = 1 << log2
            ms = min_cpu_us(forward_backward(chunked), args.repeats) / 1e3
            print(f"  chunked, 2^{log2} elements per chunk: {ms:.2f} ms")
        cpu_chunked.CHUNK_ELEMENTS = default


if __name__ == "__main__":
    main()
