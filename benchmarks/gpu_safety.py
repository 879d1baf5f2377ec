"""Cost of the safe default on the fused path: ``NewtonConfig()`` (tol="auto": the
boundary mismatch is checked on the device and unconverged blocks rerun exactly) against
the unchecked ``NewtonConfig(tol=None)``, at the training shapes, layer level.

    PYTHONPATH=src python benchmarks/gpu_safety.py --out results/<folder>

For each cell (ParaGRU, ParaLSTM), shape B x T x N, dtype (float32 parameters with
float32 input, or bfloat16 autocast) and pass (forward, forward+backward): the median of
20 timed calls (CUDA events around each call, after 5 warm-up calls) for both configs,
the overhead in percent, and the plan the solve ran (segments, whether it fell back).
Writes ``<out>/gpu_safety.json`` and prints a markdown table. About 2-4 minutes on an H200.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import torch

import pararnn
from cuda_timing import REPEATS, make_layer, time_layer

SHAPES = [(8, 4096, 1024), (16, 1024, 512), (32, 512, 512), (1, 65536, 256)]


def measure(layer_cls, shape, dtype, backward: bool):
    layer = make_layer(layer_cls, shape[2])
    row = {}
    for name, config in (("checked", pararnn.NewtonConfig()),
                         ("unchecked", pararnn.NewtonConfig(tol=None))):
        layer.newton = config
        row[f"{name}_ms"] = time_layer(layer, shape, dtype, backward)
        info = layer.last_solve
        row[f"{name}_plan"] = {"segments": info.segments, "boundary_rounds": info.boundary_rounds,
                               "fell_back": info.fell_back}
    row["overhead_pct"] = 100.0 * (row["checked_ms"] / row["unchecked_ms"] - 1.0)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_safety.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_safety.py needs a CUDA device")
    os.makedirs(args.out, exist_ok=True)
    rows = []
    print("| cell | B x T x N | dtype | pass | checked ms | unchecked ms | overhead | segments | fell back |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer_cls in (pararnn.ParaGRU, pararnn.ParaLSTM):
        for shape in SHAPES:
            for dtype in ("fp32", "bf16"):
                for backward in (False, True):
                    row = {"cell": layer_cls.__name__, "shape": list(shape), "dtype": dtype,
                           "pass": "fwd+bwd" if backward else "fwd",
                           **measure(layer_cls, shape, dtype, backward)}
                    rows.append(row)
                    print(f"| {row['cell']} | {'x'.join(map(str, shape))} | {dtype} | {row['pass']} "
                          f"| {row['checked_ms']:.3f} | {row['unchecked_ms']:.3f} "
                          f"| {row['overhead_pct']:+.1f}% | {row['checked_plan']['segments']} "
                          f"| {row['checked_plan']['fell_back']} |", flush=True)
                    torch.cuda.empty_cache()
    result = {"benchmark": "gpu_safety", "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "repeats": REPEATS, "rows": rows}
    with open(os.path.join(args.out, "gpu_safety.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
