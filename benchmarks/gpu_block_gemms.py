"""The matrix products of the language models' blocks, each timed alone on a CUDA GPU:
where the ParaRNN block's GEMM time goes against the Transformer's.

    PYTHONPATH=src python benchmarks/gpu_block_gemms.py [--size small] [--json OUT.json]

For each model (the Transformer; ParaGRU with the purely recurrent ``tuned`` block, whose
blocks are the hybrid's recurrent ones) every weight of its first block is a product of
``tokens`` rows (``--tokens``, default 16,384: the LM benchmark's step): forward
``x @ W^T``, backward ``dy @ W`` and ``dy^T @ x``, bf16 in and out as under autocast.
The ParaRNN cell's multi-head projection ``(H, G, Nh, Dh)`` is one batched product over
its ``H`` heads (its head-major layout). ``--mlp-hidden`` adds the SwiGLU's two products at
other hidden widths (the ParaRNN block narrows it to keep the parameter count), to see
whether the width's shape costs more than its FLOPs. Each product is the GPU's own time
(median of CUDA-graph replays); TFLOP/s = 2 x rows x weight entries per product.
"""

from __future__ import annotations

import argparse
import datetime
import json

import torch

from cuda_timing import graph_median_ms


def block_weights(model_name: str, size: str, block: str) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of the matmul weights of the model's first block."""
    from pararnn.layers.projection import MultiHeadProjection
    from pararnn.models import build_model
    from pararnn.models.config import preset

    model = build_model(preset(model_name, size, vocab_size=320, block=block))
    first = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))[0]
    return [(name, tuple(m.weight.shape)) for name, m in first.named_modules()
            if isinstance(m, (torch.nn.Linear, MultiHeadProjection))]


def products(shape: tuple[int, ...], tokens: int, device, dtype=torch.bfloat16) -> dict:
    """The three products of one weight as functions (``fns``), their operands and the FLOPs
    of each."""
    bf16 = dict(device=device, dtype=dtype)
    if len(shape) == 4:  # (heads, gates, head_out, head_in): batched over the heads
        heads, gates, head_out, head_in = shape
        x = torch.randn(heads, tokens, head_in, **bf16)
        w = torch.randn(heads, gates * head_out, head_in, **bf16)
        dy = torch.randn(heads, tokens, gates * head_out, **bf16)
        fns = {"fwd": lambda: torch.bmm(x, w.transpose(1, 2)), "dx": lambda: torch.bmm(dy, w),
               "dw": lambda: torch.bmm(dy.transpose(1, 2), x)}
        entries = heads * gates * head_out * head_in
    else:
        out_features, in_features = shape
        x = torch.randn(tokens, in_features, **bf16)
        w = torch.randn(out_features, in_features, **bf16)
        dy = torch.randn(tokens, out_features, **bf16)
        fns = {"fwd": lambda: x @ w.t(), "dx": lambda: dy @ w, "dw": lambda: dy.t() @ x}
        entries = out_features * in_features
    return {"fns": fns, "x": x, "w": w, "dy": dy, "flops": 2 * tokens * entries}


def measure(name: str, shape: tuple[int, ...], tokens: int, device) -> dict:
    p = products(shape, tokens, device)
    ms = {part: graph_median_ms(fn) for part, fn in p["fns"].items()}
    total = sum(ms.values())
    return {"name": name, "shape": list(shape), "ms": ms, "total_ms": total,
            "tflops": 3 * p["flops"] / total / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--mlp-hidden", default="512,576,640,768,1024,1408",
                    help="comma-separated SwiGLU hidden widths also timed ('' for none)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_block_gemms.py needs a CUDA device")
    device = torch.device("cuda")
    rows = []
    blocks = {model_name: (block, block_weights(model_name, args.size, block))
              for model_name, block in (("transformer", "standard"), ("paragru", "tuned"))}
    for model_name, (block, weights) in blocks.items():
        print(f"{model_name} ({block}), first block, {args.tokens} rows:")
        for name, shape in weights:
            row = measure(name, shape, args.tokens, device) | {"model": model_name}
            rows.append(row)
            print(f"  {name:40s} {str(shape):22s} fwd {row['ms']['fwd']:.4f}  dx {row['ms']['dx']:.4f}"
                  f"  dw {row['ms']['dw']:.4f}  total {row['total_ms']:.4f} ms  {row['tflops']:6.1f} TFLOP/s")
        block_ms = sum(r["total_ms"] for r in rows if r["model"] == model_name)
        print(f"  block total {block_ms:.4f} ms")
    d_model = dict(blocks["transformer"][1])["mixer.qkv"][1]  # the block input's width
    for hidden in (int(h) for h in args.mlp_hidden.split(",") if h):
        for name, shape in ((f"swiglu{hidden}.gate_up", (2 * hidden, d_model)),
                            (f"swiglu{hidden}.down", (d_model, hidden))):
            row = measure(name, shape, args.tokens, device) | {"model": "swiglu"}
            rows.append(row)
            print(f"  {name:40s} {str(shape):22s} total {row['total_ms']:.4f} ms  {row['tflops']:6.1f} TFLOP/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                       "size": args.size, "tokens": args.tokens, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
