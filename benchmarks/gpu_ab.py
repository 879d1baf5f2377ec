"""Before/after timing of two source trees: ParaGRU/ParaLSTM layer time with the unchecked
Newton config, whichever ``pararnn`` is first on ``PYTHONPATH``.

    PYTHONPATH=OLD/src python benchmarks/gpu_ab.py --label before --out DIR
    PYTHONPATH=src     python benchmarks/gpu_ab.py --label after  --out DIR

Both runs time the same layers on the same inputs (``NewtonConfig(tol=None)``, an option
every version has, so the safety check is not part of the comparison; gpu_safety.py
measures that), fp32 and bf16 autocast, forward and forward+backward: the median of 20
calls, each between two CUDA events, after 5 warm-up calls. Writes ``DIR/gpu_ab_<label>.json``.
Run the two back to back in one session so that they share the device and its clocks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import torch

import pararnn
from cuda_timing import make_layer, time_layer

SHAPES = [(8, 4096, 1024), (16, 1024, 512), (1, 65536, 256), (64, 2048, 2048)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="name of this tree, e.g. before / after")
    parser.add_argument("--out", required=True, help="folder for gpu_ab_<label>.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_ab.py needs a CUDA device")
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for layer_cls in (pararnn.ParaGRU, pararnn.ParaLSTM):
        for shape in SHAPES:
            for dtype in ("fp32", "bf16"):
                for backward in (False, True):
                    ms = time_layer(make_layer(layer_cls, shape[2], newton=pararnn.NewtonConfig(tol=None)),
                                    shape, dtype, backward)
                    rows.append({"cell": layer_cls.__name__, "shape": list(shape), "dtype": dtype,
                                 "pass": "fwd+bwd" if backward else "fwd", "ms": ms})
                    print(f"{args.label} {layer_cls.__name__} {'x'.join(map(str, shape))} {dtype} "
                          f"{rows[-1]['pass']}: {ms:.3f} ms", flush=True)
                    torch.cuda.empty_cache()
    result = {"benchmark": "gpu_ab", "label": args.label, "pararnn": os.path.dirname(pararnn.__file__),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "rows": rows}
    with open(os.path.join(args.out, f"gpu_ab_{args.label}.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
