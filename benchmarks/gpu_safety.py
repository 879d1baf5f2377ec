"""Cost of the safe default on the fused path: ``NewtonConfig()`` (tol="auto": the
boundary mismatch is checked on the device and unconverged blocks rerun exactly) against
the unchecked ``NewtonConfig(tol=None)``, at the training shapes, layer level.

    PYTHONPATH=src python benchmarks/gpu_safety.py --out results/<folder>

For each cell (ParaGRU, ParaLSTM), shape B x T x N, dtype (float32 parameters with
float32 input, or bfloat16 autocast) and pass (forward, forward+backward): two copies of
the layer (same weights, one per config) timed in turns on the same input, the median of
``--repeats`` calls each (CUDA events around each call, after 5 warm-up calls), the
overhead in percent, and the plan the solve ran (segments, whether it fell back). Timing
in turns matters: most of these calls are bound by host work, whose speed drifts by tens
of percent between one block of calls and the next.

``--shapes 1x65536x256,16x1024x512`` limits the shapes. ``--checked-rounds 2`` adds, in the
same turns, a checked config with that many boundary-Newton rounds (the others keep the
default): with the device check a round fewer is safe (a block whose boundaries still
mismatch reruns exactly) and launches one kernel fewer; the ``fell back`` column says, per
checked config, whether its rounds sufficed. Uses only the public layer API,
so it measures whichever ``pararnn`` is first on ``PYTHONPATH`` (an older tree too).
Writes ``<out>/gpu_safety[_<label>].json`` and prints a markdown table. About 2-4 minutes
on an H200 for all shapes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import torch

import pararnn
from cuda_timing import interleaved_median_event_ms, layer_call, make_layer

SHAPES = [(8, 4096, 1024), (16, 1024, 512), (32, 512, 512), (1, 65536, 256)]


def measure(layer_cls, shape, dtype, backward: bool, repeats: int, checked_rounds: int | None = None):
    configs = {"checked": pararnn.NewtonConfig()}
    if checked_rounds is not None:
        configs["checked_rounds"] = pararnn.NewtonConfig(boundary_rounds=checked_rounds)
    configs["unchecked"] = pararnn.NewtonConfig(tol=None)
    layers = {name: make_layer(layer_cls, shape[2], newton=cfg) for name, cfg in configs.items()}
    x = torch.randn(*shape, device="cuda", requires_grad=backward)
    with torch.set_grad_enabled(backward):
        times = interleaved_median_event_ms(
            [layer_call(layer, x, dtype, backward) for layer in layers.values()], repeats)
    row = {}
    for (name, layer), ms in zip(layers.items(), times):
        info = layer.last_solve
        row[f"{name}_ms"] = ms
        row[f"{name}_plan"] = {"segments": info.segments, "boundary_rounds": info.boundary_rounds,
                               "fell_back": info.fell_back}
    for name in layers:
        if name != "unchecked":
            row[f"{name}_overhead_pct"] = 100.0 * (row[f"{name}_ms"] / row["unchecked_ms"] - 1.0)
    row["overhead_pct"] = row["checked_overhead_pct"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_safety.json")
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES),
                        help="comma-separated BxTxN (default: the training shapes)")
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per config")
    parser.add_argument("--label", default="", help="suffix of the JSON name, e.g. before")
    parser.add_argument("--checked-rounds", type=int, default=None,
                        help="also time a checked config with this many boundary rounds")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_safety.py needs a CUDA device")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    os.makedirs(args.out, exist_ok=True)
    rows = []
    rounds = args.checked_rounds
    extra = f" {rounds}-round checked ms | overhead |" if rounds is not None else ""
    print(f"| cell | B x T x N | dtype | pass | checked ms | overhead |{extra} unchecked ms "
          "| segments | fell back |")
    print("|---" * (9 + 2 * (rounds is not None)) + "|")
    for layer_cls in (pararnn.ParaGRU, pararnn.ParaLSTM):
        for shape in shapes:
            for dtype in ("fp32", "bf16"):
                for backward in (False, True):
                    row = {"cell": layer_cls.__name__, "shape": list(shape), "dtype": dtype,
                           "pass": "fwd+bwd" if backward else "fwd",
                           **measure(layer_cls, shape, dtype, backward, args.repeats, rounds)}
                    rows.append(row)
                    fell = [row[f"{n}_plan"]["fell_back"] for n in ("checked", "checked_rounds") if f"{n}_ms" in row]
                    cells = [f"{row['checked_ms']:.3f}", f"{row['checked_overhead_pct']:+.1f}%"]
                    if rounds is not None:
                        cells += [f"{row['checked_rounds_ms']:.3f}", f"{row['checked_rounds_overhead_pct']:+.1f}%"]
                    cells += [f"{row['unchecked_ms']:.3f}", str(row["checked_plan"]["segments"]),
                              "/".join(map(str, fell))]
                    print(f"| {row['cell']} | {'x'.join(map(str, shape))} | {dtype} | {row['pass']} | "
                          + " | ".join(cells) + " |", flush=True)
                    torch.cuda.empty_cache()
    result = {"benchmark": "gpu_safety", "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "pararnn": os.path.dirname(pararnn.__file__),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "repeats": args.repeats, "checked_rounds": args.checked_rounds, "rows": rows}
    name = f"gpu_safety_{args.label}.json" if args.label else "gpu_safety.json"
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
