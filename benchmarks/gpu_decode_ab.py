"""Compiled decode step of the ParaRNN models: the fused Triton cell step (a custom operator,
opaque to inductor) against the cell's PyTorch step, which inductor compiles itself and can
fuse with the gated norm after it and the layout copy before it.

    PYTHONPATH=src python benchmarks/gpu_decode_ab.py --out OUTDIR   # ~60 s on an H200

Both variants run the same model (``--size small``, the tuned block, bf16) through a
:class:`~pararnn.generation.Generator` (inductor, then a CUDA graph); the script reports the
decode speed at batch 1 and 64 and the largest logit difference between the two variants
after the same prompt and tokens. Writes OUTDIR/decode_ab.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pararnn.generation import Generator, benchmark_decode
from pararnn.models import build_model, preset
from pararnn.models import rnn_mixer

VARIANTS = {"triton op": True, "inductor cell step": False}  # value: rnn_mixer._TRITON


def decode_logits(generator: Generator, prompt: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    logits = [generator.prefill(prompt, prompt.shape[1] + len(tokens) + 1).float()]
    logits += [generator.step(token).float() for token in tokens]
    return torch.stack(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--new-tokens", type=int, default=200)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, checks = [], []
    for name in ("paragru", "paralstm"):
        torch.manual_seed(0)
        model = build_model(preset(name, "small", block="tuned")).cuda().eval()
        # batch 1: the check compiles the graph that the batch-1 timing then reuses
        prompt = torch.randint(0, model.cfg.vocab_size, (1, 64), device="cuda")
        tokens = torch.randint(0, model.cfg.vocab_size, (16, 1), device="cuda")
        logits = {}
        for variant, fused in VARIANTS.items():
            rnn_mixer._TRITON = fused
            generator = Generator(model, dtype=torch.bfloat16)
            start = time.perf_counter()
            logits[variant] = decode_logits(generator, prompt, tokens)
            first_s = time.perf_counter() - start  # includes compiling for this shape
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                row = benchmark_decode(generator, batch, 512, args.new_tokens, bandwidth=4.25e12)
                generator.release()
                rows.append({"model": name, "variant": variant, "first_call_s": first_s, **row})
                print(f"{name:<9} {variant:<19} batch {batch:>4}: {row['decode_tok_s']:>10.0f} tok/s "
                      f"{row['step_ms']:.4f} ms/step  compiled={row['compiled']}", flush=True)
        rnn_mixer._TRITON = True
        diff = (logits["triton op"] - logits["inductor cell step"]).abs().max().item()
        checks.append({"model": name, "max_abs_logit_diff": diff})
        print(f"{name}: largest logit difference between the variants {diff:.3e}", flush=True)
        (out / "decode_ab.json").write_text(json.dumps({
            "device_name": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows, "checks": checks},
            indent=1))


if __name__ == "__main__":
    main()
