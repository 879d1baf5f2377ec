"""Session 13 A/B: the conv backward with SiLU as one kernel (dz recomputed at each shift)
against two (a float32 dz written, then read), graphed, in turns; then tiles of the one-kernel
version. Prints and writes JSON to argv[1]."""
import json, sys
import torch
sys.path.insert(0, "benchmarks")
from cuda_timing import graphed, interleaved_median_event_ms
from gpu_conv import SHAPES, DTYPES, KERNEL_SIZE, floor_ms, kernel_call
from pararnn.kernels import causal_conv

def setting(fn, silu_in_bwd, tile=None, programs=None):
    tile = tile or causal_conv.CUDA_TILE
    programs = programs or causal_conv.PROGRAMS_PER_SM
    def run():
        causal_conv.SILU_IN_BACKWARD = silu_in_bwd
        causal_conv.CUDA_TILE, causal_conv.PROGRAMS_PER_SM = tile, programs
        fn()
    return run

TILES = [((16, 64, 2), 16), ((32, 64, 4), 16), ((16, 64, 4), 16), ((8, 64, 2), 16), ((16, 128, 4), 16),
         ((32, 32, 2), 16), ((16, 64, 2), 32), ((16, 64, 2), 8)]
out = {"rows": []}
default = causal_conv.CUDA_TILE, causal_conv.PROGRAMS_PER_SM
for shape in SHAPES:
    for dn, dtype in DTYPES.items():
        b, t, c = shape
        torch.manual_seed(0)
        w = torch.randn(c, 1, KERNEL_SIZE, device="cuda"); bias = torch.randn(c, device="cuda")
        x = torch.randn(b, t, c, device="cuda", dtype=dtype); g = torch.randn(b, t, c, device="cuda", dtype=dtype)
        # agreement of the two backward versions
        causal_conv.SILU_IN_BACKWARD = False; two = causal_conv.backward(x, w, bias, g, True)
        causal_conv.SILU_IN_BACKWARD = True; one = causal_conv.backward(x, w, bias, g, True)
        diff = [((p.float() - q.float()).abs().max() / q.float().abs().max()).item() for p, q in zip(one, two)]
        fns = [graphed(setting(kernel_call(x, w, bias, g, True), False)),
               graphed(setting(kernel_call(x, w, bias, g, True), True))]
        fns += [graphed(setting(kernel_call(x, w, bias, g, True), True, tile, p)) for tile, p in TILES[1:]]
        ms = interleaved_median_event_ms(fns)
        causal_conv.CUDA_TILE, causal_conv.PROGRAMS_PER_SM = default
        fl = floor_ms(b, t, c, dtype, True)
        row = {"shape": shape, "dtype": dn, "floor_ms": fl, "two_kernels": ms[0], "one_kernel": ms[1],
               "one_kernel_tiles": [{"tile": tl_, "programs_per_sm": p, "ms": m} for (tl_, p), m in zip(TILES, ms[1:])],
               "rel_diff_one_vs_two": diff}
        out["rows"].append(row)
        print(f"{'x'.join(map(str, shape)):>14} {dn} fwd+bwd: two {ms[0]:.4f} one {ms[1]:.4f} floor {fl:.4f} | "
              + "  ".join(f"{'x'.join(map(str, tl_))}/{p} {m:.4f}" for (tl_, p), m in zip(TILES[1:], ms[2:]))
              + f" | diff {max(diff):.1e}", flush=True)
        json.dump(out, open(sys.argv[1], "w"), indent=1)
