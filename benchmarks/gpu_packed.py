"""Packed documents (``cu_seqlens``) on the GPU: the same tokens as one packed row, as a
padded batch and through the generic (PyTorch) path, side by side in one run.

    PYTHONPATH=src python benchmarks/gpu_packed.py --out DIR

For ParaGRU and ParaLSTM layers (hidden 1024, 8 heads, recurrent clip 0.5), fp32 and bf16
autocast, forward and forward+backward, median ms of 20 calls between CUDA events:

* ``packed``: 32,768 tokens in one row with ``cu_seqlens`` (equal documents of 4,096 tokens,
  and 64 documents of random lengths), starting from zeros: the fused kernels, each document
  boundary a reset;
* ``padded``: the equal documents as a batch of 8 rows of 4,096 (the same work, no resets);
* ``generic``: the packed row on the PyTorch Newton path (``backend="torch"``), which
  packed documents took before they reached the fused kernels.

Also records which backend ran (``layer.last_solve.backend``). Writes ``DIR/gpu_packed.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

import pararnn
from cuda_timing import layer_call, make_layer, median_event_ms

TOKENS, HIDDEN = 32768, 1024


def document_lengths(kind: str) -> list[int]:
    if kind == "equal":
        return [4096] * (TOKENS // 4096)
    generator = torch.Generator().manual_seed(0)
    cuts = torch.randperm(TOKENS - 1, generator=generator)[:63].add(1).sort().values.tolist()
    edges = [0] + cuts + [TOKENS]
    return [b - a for a, b in zip(edges, edges[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_packed.py needs a CUDA GPU")
    os.makedirs(args.out, exist_ok=True)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "tokens": TOKENS, "hidden": HIDDEN, "rows": []}
    print(f"{'cell':>8} {'docs':>6} {'dtype':>5} {'pass':>7} {'packed':>8} {'padded':>8} {'generic':>8}  backends")
    for layer_cls in (pararnn.ParaGRU, pararnn.ParaLSTM):
        fused = make_layer(layer_cls, HIDDEN)
        generic = make_layer(layer_cls, HIDDEN, backend="torch")
        generic.load_state_dict(fused.state_dict())
        for docs in ("equal", "random"):
            lengths = document_lengths(docs)
            cu_seqlens = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
            for dtype in ("fp32", "bf16"):
                for backward in (False, True):
                    x = torch.randn(1, TOKENS, HIDDEN, device="cuda", requires_grad=backward)
                    row = {"cell": layer_cls.__name__, "documents": docs, "count": len(lengths),
                           "dtype": dtype, "backward": backward}
                    with torch.set_grad_enabled(backward):
                        row["packed_ms"] = median_event_ms(
                            layer_call(fused, x, dtype, backward, cu_seqlens=cu_seqlens))
                        row["packed_backend"] = fused.last_solve.backend
                        row["generic_ms"] = median_event_ms(
                            layer_call(generic, x, dtype, backward, cu_seqlens=cu_seqlens), repeats=5, warmup=1)
                        row["generic_backend"] = generic.last_solve.backend
                        if docs == "equal":
                            padded = x.detach().reshape(len(lengths), 4096, HIDDEN).clone().requires_grad_(backward)
                            row["padded_ms"] = median_event_ms(layer_call(fused, padded, dtype, backward))
                    record["rows"].append(row)
                    padded_text = f"{row['padded_ms']:8.3f}" if "padded_ms" in row else f"{'-':>8}"
                    print(f"{row['cell']:>8} {len(lengths):>6} {dtype:>5} {'fwd+bwd' if backward else 'fwd':>7} "
                          f"{row['packed_ms']:8.3f} {padded_text} {row['generic_ms']:8.3f}  "
                          f"{row['packed_backend']} / {row['generic_backend']}", flush=True)
                    with open(os.path.join(args.out, "gpu_packed.json"), "w") as f:
                        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
