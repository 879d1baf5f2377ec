"""Session 13 A/B 2: the conv backward kernel with whole columns per thread (BWD_COLS tiles,
programs per SM) and dz in x's dtype, against the shipped backward; graphed fwd+bwd in turns."""
import json, sys
import torch
sys.path.insert(0, "benchmarks")
from cuda_timing import graphed, interleaved_median_event_ms
from gpu_conv import SHAPES, DTYPES, KERNEL_SIZE, floor_ms, kernel_call
from pararnn.kernels import causal_conv as cc

# (BWD_COLS, PROGRAMS_PER_SM, DZ_IN_X_DTYPE); first = shipped
VARIANTS = [(None, 16, False), (None, 16, True), ((8, 64, 1), 16, False), ((8, 64, 1), 32, False),
            ((16, 64, 1), 32, False), ((8, 128, 2), 16, False), ((16, 128, 2), 16, False),
            ((8, 128, 1), 32, False), ((4, 64, 1), 32, False), ((8, 256, 4), 16, False),
            ((8, 64, 1), 32, True), ((8, 128, 2), 16, True)]

def setting(fn, cols, programs, dzx):
    def run():
        cc.BWD_COLS, cc.PROGRAMS_PER_SM, cc.DZ_IN_X_DTYPE = cols, programs, dzx
        fn()
    return run

out = {"variants": [list(v) if v[0] is None else [list(v[0]), v[1], v[2]] for v in VARIANTS], "rows": []}
for shape in SHAPES:
    for dn, dtype in DTYPES.items():
        b, t, c = shape
        torch.manual_seed(0)
        w = torch.randn(c, 1, KERNEL_SIZE, device="cuda"); bias = torch.randn(c, device="cuda")
        x = torch.randn(b, t, c, device="cuda", dtype=dtype); g = torch.randn(b, t, c, device="cuda", dtype=dtype)
        diffs = []
        ref = None
        for v in VARIANTS:
            cc.BWD_COLS, cc.PROGRAMS_PER_SM, cc.DZ_IN_X_DTYPE = v
            got = cc.backward(x, w, bias, g, True)
            ref = ref or got
            diffs.append(max(((p.float() - q.float()).abs().max() / q.float().abs().max()).item() for p, q in zip(got, ref)))
        ms = interleaved_median_event_ms([graphed(setting(kernel_call(x, w, bias, g, True), *v)) for v in VARIANTS])
        cc.BWD_COLS, cc.PROGRAMS_PER_SM, cc.DZ_IN_X_DTYPE = VARIANTS[0]
        fl = floor_ms(b, t, c, dtype, True)
        out["rows"].append({"shape": shape, "dtype": dn, "floor_ms": fl, "ms": ms, "rel_diff": diffs})
        print(f"{'x'.join(map(str, shape)):>14} {dn} floor {fl:.4f} | " + "  ".join(f"{m:.4f}" for m in ms)
              + f" | maxdiff {max(diffs):.1e}", flush=True)
        json.dump(out, open(sys.argv[1], "w"), indent=1)
print("variants:", VARIANTS)
