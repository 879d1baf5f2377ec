"""Per-call cost of the ParaGRU / ParaLSTM layers on a CUDA GPU, where host work (argument
checks, plan, launches) rather than the GPU bounds the time.

    PYTHONPATH=src python benchmarks/gpu_overhead.py --out results/<folder>

1. ``per_call``: forward at B=1, T=16 (decode-like prompt chunks), no gradients, default
   config: wall-clock per call over 300 back-to-back calls (host-bound; the median of 5
   such rounds, the layers' rounds taken in turns), next to the GPU time of the same
   forward replayed from a CUDA graph (the floor once the host is out), the kernels one
   call launches (torch.profiler) and the host's Python functions by own time per call
   (cProfile, ``host_profile``).
2. ``layers``: the layer table at language-model shapes (16x1024x512, 8x4096x1024),
   forward and forward+backward, fp32 and bf16 autocast: median of 20 calls, each timed
   with CUDA events.
3. ``ops``: host time per call of each registered op as a compiled training step calls
   it (``torch.ops.pararnn.*.default``: the fused ParaGRU/ParaLSTM solve and the causal
   conv, forward and backward), of the same work called as plain Python (no dispatcher),
   and of references: an empty Triton launch with one argument and with as many as the
   solve's kernel takes, ``torch.empty``, an aten add. Tiny shapes (1x16x512, bf16
   pre-activations), so the host, not the GPU, sets the time: the same back-to-back
   rounds as ``per_call``. This splits a compiled LM step's host time into dispatcher,
   our Python and launches.

``--sections per_call`` runs the first only (about 20 s). ``per_call`` and ``layers`` use only
the public layer API, so they measure whichever ``pararnn`` is first on ``PYTHONPATH`` (an
older tree too):

    PYTHONPATH=OLD/src python benchmarks/gpu_overhead.py --sections per_call --out DIR --label before

Writes ``<out>/gpu_overhead[_<label>].json`` and prints the tables. About 1-2 minutes on an
H200 with all sections.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time

import torch
import triton
import triton.language as tl

import pararnn
from cuda_timing import graphed, make_layer, time_layer
from gpu_lm_speed import host_profile_steps
from pararnn.kernels import causal_conv, gated_norm, paragru, paralstm

CALLS, ROUNDS = 300, 5
LAYER_SHAPES = [(16, 1024, 512), (8, 4096, 1024)]


def host_rounds_us(fn) -> list[float]:
    """Microseconds per call of ``fn`` issued back to back, in each of ROUNDS rounds of CALLS
    calls after 20 warm-up calls (tiny work: the GPU keeps up, so this is the host's time)."""
    return interleaved_rounds_us([fn])[0]


def interleaved_rounds_us(fns) -> list[list[float]]:
    """:func:`host_rounds_us` of several functions, their rounds taken in turns (round 1 of
    each, then round 2 of each, ...): the host's speed drifts along a process (on the H200
    the second layer timed per call was up to 2x slower than the first, whichever it was),
    and turns spread that drift over all of them instead of charging it to the last."""
    for fn in fns:
        for _ in range(20):
            fn()
    rounds = [[] for _ in fns]
    for _ in range(ROUNDS):
        for fn, times in zip(fns, rounds):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(CALLS):
                fn()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e6 / CALLS)
    return rounds


def per_call(specs) -> list[dict]:
    """The ``per_call`` rows of ``specs`` ((layer class, hidden) pairs): host rounds in turns
    first, then each layer's kernels, host profile and CUDA-graph replay (a captured graph
    is not around while any eager round runs)."""
    layers = [(make_layer(layer_cls, hidden), torch.randn(1, 16, hidden, device="cuda"))
              for layer_cls, hidden in specs]
    calls = [lambda layer=layer, x=x: layer(x) for layer, x in layers]
    rows = []
    with torch.no_grad():
        all_rounds = interleaved_rounds_us(calls)
        for (layer_cls, hidden), (layer, x), call, rounds in zip(specs, layers, calls, all_rounds):
            rounds = [us / 1e3 for us in rounds]
            kernels = kernels_of(call)
            host = host_profile_steps(lambda i: call(), range(CALLS), top=20)
            replay = graphed(call, warmup=1)
            replay()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(CALLS):
                replay()
            torch.cuda.synchronize()
            graph_ms = (time.perf_counter() - start) * 1e3 / CALLS
            rows.append({"cell": layer_cls.__name__, "hidden": hidden, "shape": [1, 16, hidden],
                         "eager_ms_per_call": statistics.median(rounds), "eager_ms_rounds": rounds,
                         "cuda_graph_ms_per_call": graph_ms, "kernels_per_call": len(kernels),
                         "kernels": kernels, "plan_segments": layer.last_solve.segments,
                         "host_profile": host})
    return rows


@triton.jit
def _empty_kernel(X):
    pass


@triton.jit
def _empty_kernel_many(X0, X1, X2, X3, X4, X5, X6, X7, X8, X9, X10, X11, n0, n1, n2, n3, n4,
                       n5, n6, tol, A: tl.constexpr, B: tl.constexpr, C: tl.constexpr,
                       D: tl.constexpr, E: tl.constexpr, F: tl.constexpr):
    pass


def op_rows() -> list[dict]:
    """Host time per call of the registered ops, their plain Python and references."""
    dev, n = "cuda", 512
    pre = torch.randn(1, 16, 3 * n, device=dev, dtype=torch.bfloat16)
    a = torch.randn(3, n, device=dev) * 0.3
    peephole = torch.randn(2, n, device=dev) * 0.3
    x = torch.randn(1, 16, n, device=dev, dtype=torch.bfloat16)
    weight, bias = torch.randn(n, 1, 4, device=dev), torch.zeros(n, device=dev)
    gru_h, _ = paragru.forward(pre, a)
    lstm_h, _ = paralstm.forward(pre, a, peephole)
    gru_g, lstm_g, conv_g = torch.randn_like(gru_h), torch.randn_like(lstm_h), torch.randn_like(x)
    ops = torch.ops.pararnn
    ptr = torch.empty(16, device=dev)
    cases = {
        "paragru forward: op": lambda: ops.paragru_forward.default(pre, a, None, None, None, None, 3, 1e-4, False, False),
        "paragru forward: python": lambda: paragru.forward(pre, a, None, None, 3, verify_tol=1e-4),
        "paragru backward: op": lambda: ops.paragru_backward.default(pre, a, None, None, None, None, gru_h, gru_g),
        "paragru backward: python": lambda: paragru._backward_parts(pre, a, None, None, gru_h, gru_g),
        "paralstm forward: op": lambda: ops.paralstm_forward.default(pre, a, peephole, None, None, None, None, 3, 1e-4, False, False),
        "paralstm forward: python": lambda: paralstm.forward(pre, a, peephole, None, None, 3, verify_tol=1e-4),
        "paralstm backward: op": lambda: ops.paralstm_backward.default(pre, a, peephole, None, None, None, None, lstm_h, lstm_g),
        "paralstm backward: python": lambda: paralstm._backward_parts(pre, a, peephole, None, None, lstm_h, lstm_g),
        "causal conv forward: op": lambda: ops.causal_conv1d.default(x, weight, bias, True),
        "causal conv forward: python": lambda: causal_conv.forward(x, weight, bias, True),
        "causal conv backward: op": lambda: ops.causal_conv1d_backward.default(x, weight, bias, conv_g, True),
        "causal conv backward: python": lambda: causal_conv.backward(x, weight, bias, conv_g, True),
        "gated norm forward: op": lambda: ops.gated_rms_norm.default(x, x, bias, 1e-5, x.dtype),
        "gated norm forward: python": lambda: gated_norm.forward(x, x, bias, 1e-5, x.dtype),
        "gated norm backward: op": lambda: ops.gated_rms_norm_backward.default(x, x, bias, 1e-5, conv_g),
        "gated norm backward: python": lambda: gated_norm.backward(x, x, bias, 1e-5, conv_g),
        "empty Triton launch, 1 argument": lambda: _empty_kernel[(1,)](ptr),
        "empty Triton launch, 26 arguments": lambda: _empty_kernel_many[(1, 1, 1)](
            *([ptr] * 12), 1, 2, 3, 4, 5, 6, 7, 1e-6, A=1, B=2, C=True, D=False, E=4, F=8, num_warps=1),
        "torch.empty": lambda: torch.empty(1, 16, n, device=dev),
        "aten add": lambda: torch.add(x, x),
    }
    with torch.no_grad():
        return [{"case": name, "host_us": statistics.median(host_rounds_us(fn))}
                for name, fn in cases.items()]


def kernels_of(fn) -> list[str]:
    """Names of the GPU kernels (and memsets/copies) one call of ``fn`` launches, in order."""
    fn()  # anything lazily set up happens outside the profile
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return [e.name for e in sorted(events, key=lambda e: e.time_range.start)]


def layer_row(layer_cls, shape, dtype, backward):
    layer = make_layer(layer_cls, shape[2])
    ms = time_layer(layer, shape, dtype, backward)
    return {"cell": layer_cls.__name__, "shape": list(shape), "dtype": dtype,
            "pass": "fwd+bwd" if backward else "fwd", "ms": ms,
            "plan_segments": layer.last_solve.segments}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_overhead.json")
    parser.add_argument("--sections", default="per_call,layers,ops",
                        help="comma-separated: per_call, layers, ops (default all)")
    parser.add_argument("--label", default="", help="suffix of the JSON name, e.g. before")
    parser.add_argument("--cells", default="ParaGRU,ParaLSTM",
                        help="per_call and layers: these layers, in this order")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_overhead.py needs a CUDA device")
    sections = args.sections.split(",")
    cells = [getattr(pararnn, name) for name in args.cells.split(",")]
    os.makedirs(args.out, exist_ok=True)
    result = {"benchmark": "gpu_overhead", "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "pararnn": os.path.dirname(pararnn.__file__),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "per_call": [], "layers": [], "ops": []}
    if "per_call" in sections:
        print("| cell | B x T x N | eager ms/call | CUDA-graph ms/call | kernels/call | segments |\n"
              "|---|---|---|---|---|---|")
        result["per_call"] = per_call([(cls, hidden) for cls in cells for hidden in (512, 1024)])
        for row in result["per_call"]:
            print(f"| {row['cell']} | 1x16x{row['hidden']} | {row['eager_ms_per_call']:.3f} "
                  f"| {row['cuda_graph_ms_per_call']:.3f} | {row['kernels_per_call']} "
                  f"| {row['plan_segments']} |", flush=True)
        for row in result["per_call"]:
            print(f"kernels of {row['cell']} 1x16x{row['hidden']}: " + ", ".join(
                name[:40] for name in row["kernels"]))
        for row in result["per_call"]:  # where the host's time goes, under cProfile
            print(f"host of {row['cell']} 1x16x{row['hidden']} (us per call, own / cumulative):")
            for name, calls, own, cum in row["host_profile"]["by_own"][:12]:
                print(f"    {own * 1e3:7.1f} {cum * 1e3:7.1f} {calls:5.1f} x {name[:90]}")
    if "layers" in sections:
        print("\n| cell | B x T x N | dtype | pass | ms | segments |\n|---|---|---|---|---|---|")
        for layer_cls in cells:
            for shape in LAYER_SHAPES:
                for dtype in ("fp32", "bf16"):
                    for backward in (False, True):
                        row = layer_row(layer_cls, shape, dtype, backward)
                        result["layers"].append(row)
                        print(f"| {row['cell']} | {'x'.join(map(str, shape))} | {dtype} "
                              f"| {row['pass']} | {row['ms']:.3f} | {row['plan_segments']} |",
                              flush=True)
                        torch.cuda.empty_cache()
    if "ops" in sections:
        result["ops"] = op_rows()
        print("\n| call (1x16x512, bf16) | host us per call |\n|---|---:|")
        for row in result["ops"]:
            print(f"| {row['case']} | {row['host_us']:.1f} |")
    name = f"gpu_overhead_{args.label}.json" if args.label else "gpu_overhead.json"
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
