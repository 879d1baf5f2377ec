"""Language-model training speed: tokens/s, MFU and peak memory of one training step of each
model, side by side in one process, as ``pararnn train`` runs it (the same model presets and
default blocks, bf16 autocast, fused AdamW with the training loop's parameter groups,
gradient clipping).

    PYTHONPATH=src python benchmarks/gpu_lm_speed.py --out DIR [--sizes small,medium]
        [--seq-lens 512,4096] [--compile both|off|on] [--steps 20]

Every step sees the same number of tokens (``--tokens-per-step``, 16,384 = 32 x 512 as in
RESULTS.md), so a longer sequence means a smaller batch. Data are random token ids: speed
does not depend on the text. Per (size, sequence length, model, eager/compiled): warm-up
steps (compilation, Triton autotuning), then the median over ``--steps`` steps, each timed
with CUDA events from the batch upload to the optimizer step. The Transformer uses PyTorch's
SDPA (flash attention on an H200). Writes ``DIR/lm_speed.json`` after every row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

import torch

from pararnn.models import build_model, preset
from pararnn.models.flops import peak_flops, train_flops_per_token
from pararnn.train.loop import autocast_for, optimizer_groups

MODELS = ("transformer", "mamba2", "paragru", "paralstm")


def measure(model_name: str, size: str, seq_len: int, tokens_per_step: int, steps: int, warmup: int,
            compiled: bool, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(preset(model_name, size, vocab_size=320, block="auto")).to(device)
    optimizer = torch.optim.AdamW(optimizer_groups(model, lr=1e-3, weight_decay=0.1), lr=1e-3,
                                  betas=(0.9, 0.95), fused=True)
    forward = torch.compile(model) if compiled else model
    autocast = autocast_for(device, "auto")
    batch = tokens_per_step // seq_len
    tokens = torch.randint(0, 320, (steps + warmup, batch, seq_len + 1), device="cpu").pin_memory()

    def step(i: int) -> None:
        xy = tokens[i].to(device, non_blocking=True)
        with autocast:
            loss = forward(xy[:, :-1], xy[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup, warmup + steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    seconds = statistics.median(times)
    peak = peak_flops(device)
    flops = train_flops_per_token(model, seq_len)
    return {"model": model_name, "size": size, "seq_len": seq_len, "batch": batch,
            "compiled": compiled, "params": model.num_params(), "step_ms": seconds * 1e3,
            "tok_per_s": tokens_per_step / seconds,
            "mfu": tokens_per_step / seconds * flops / peak if peak else None,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sizes", default="small")
    parser.add_argument("--seq-lens", default="512,4096")
    parser.add_argument("--tokens-per-step", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_lm_speed.py needs a CUDA GPU")
    device = torch.device("cuda")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "lm_speed.json")
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "command": " ".join(sys.argv), "rows": []}
    print(f"{'size':>6} {'T':>5} {'model':>11} {'mode':>8} {'step ms':>8} {'tok/s':>10} {'MFU':>6} {'GiB':>6}")
    for size in args.sizes.split(","):
        for seq_len in map(int, args.seq_lens.split(",")):
            for compiled in modes:
                for name in args.models.split(","):
                    try:
                        row = measure(name, size, seq_len, args.tokens_per_step, args.steps, args.warmup,
                                      compiled, device)
                    except Exception as error:  # one failing row must not lose the others
                        row = {"model": name, "size": size, "seq_len": seq_len, "compiled": compiled,
                               "error": f"{type(error).__name__}: {error}"[:500]}
                        print(f"{size:>6} {seq_len:>5} {name:>11} {'compiled' if compiled else 'eager':>8} "
                              f"ERROR {row['error'][:120]}", flush=True)
                    else:
                        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
                        print(f"{size:>6} {seq_len:>5} {name:>11} {'compiled' if compiled else 'eager':>8} "
                              f"{row['step_ms']:8.2f} {row['tok_per_s']:10,.0f} {mfu:>6} "
                              f"{row['peak_mem_gib']:6.2f}", flush=True)
                    record["rows"].append(row)
                    with open(path, "w") as f:
                        json.dump(record, f, indent=1)
                    torch._dynamo.reset()
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
