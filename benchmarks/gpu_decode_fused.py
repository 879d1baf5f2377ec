"""Compiled decode step of the ParaRNN models with the projected decode kernel (the cell's
multi-head input projection and the cell step in one Triton kernel) against the projection
(inductor/cuBLAS) followed by the fused cell-step kernel.

    PYTHONPATH=src python benchmarks/gpu_decode_fused.py --out OUTDIR   # <= 120 s on an H200

Both variants run the same model (``--size small``, the tuned block, bf16) through a
:class:`~pararnn.generation.Generator` (inductor, then a CUDA graph); the switch is
``rnn_mixer.FUSED_PROJECTION_MAX_BATCH`` (every batch fused, or none). Per model, variant
and batch: the step time (median of ``--repeats`` timings of ``--new-tokens`` steps) and
the kernels one compiled step launches (torch.profiler, the step run outside the graph:
the graph replays the same kernels); per model the largest logit difference between the
variants after the same prompt and tokens (batch 1); one ParaGRU layer's kernels alone
per call, to pick the launch plan. Batch 1 of both models and the one-layer sweep run
first, and the JSON is rewritten after every row, so a run cut short keeps what finished.
Writes OUTDIR/decode_fused.json and OUTDIR/decode_fused.log.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import torch
import triton

from pararnn.generation import Generator, benchmark_decode
from pararnn.models import build_model, preset, rnn_mixer

from gpu_decode_ab import decode_logits

# value: rnn_mixer.FUSED_PROJECTION_MAX_BATCH while the variant compiles and runs
VARIANTS = {"projected kernel": 1 << 30, "projection + step kernel": 0}
MODELS = ("paragru", "paralstm")
DEVICE = "cuda"


class Log:
    def __init__(self, path: Path) -> None:
        self.file = path.open("w")

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def step_kernels(generator: Generator) -> list[str]:
    """Names of the GPU kernels (and copies/memsets) of one compiled step, in order."""
    generator._run_step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        generator._run_step()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return [e.name for e in sorted(events, key=lambda e: e.time_range.start)]


def kernel_sweep(model, batches: list[int], log, result: dict, save) -> None:
    """One ParaGRU layer of ``model`` alone, per call in a CUDA graph: the projected kernel
    at several launch targets (``decode_step._TARGET_PROGRAMS``: programs per launch, which
    sets the channel block) against the eager projection followed by the fused cell step."""
    from pararnn.kernels import decode_step

    layer = model.blocks[0].mixer.rnn
    weight = layer.projection.weight.detach().to(torch.bfloat16)
    heads, _, head_out, head_in = weight.shape
    default = decode_step._TARGET_PROGRAMS
    for batch in batches:
        u = torch.randn(batch, heads * head_in, device=DEVICE, dtype=torch.bfloat16)
        h = torch.zeros(batch, heads * head_out, device=DEVICE)
        row = {"batch": batch, "projected_us": {}}
        for target in (64, 128, 256, 512, 1024):
            decode_step._TARGET_PROGRAMS = target
            row["projected_us"][target] = 1e3 * triton.testing.do_bench_cudagraph(
                lambda: decode_step.gru_projected_step(u, weight, None, layer.cell, h, out=h))
        decode_step._TARGET_PROGRAMS = default
        with torch.no_grad():
            layer.projection.weight.data = weight  # the decode copy's bf16 weights
            row["projection_then_step_us"] = 1e3 * triton.testing.do_bench_cudagraph(
                lambda: decode_step.gru_step(layer.projection(u).contiguous(), layer.cell, h, out=h))
        result["kernel_sweep"].append(row)
        save()
        log(f"one layer, batch {batch:>3}: projected kernel (us by target programs) "
            + "  ".join(f"{t}: {us:.2f}" for t, us in row["projected_us"].items())
            + f"; eager projection + step kernel {row['projection_then_step_us']:.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", default="small")
    parser.add_argument("--batch-sizes", default="1,4,16,64")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_decode_fused.py needs a CUDA device")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "decode_fused.log")
    result = {"benchmark": "gpu_decode_fused", "device_name": torch.cuda.get_device_name(),
              "torch": torch.__version__, "triton": triton.__version__, "size": args.size,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "rows": [], "checks": [], "kernel_sweep": []}

    def save() -> None:
        (out / "decode_fused.json").write_text(json.dumps(result, indent=1))

    # each batch size compiled for its static shape, as a Generator's first shape is (a
    # compilation with a dynamic batch takes longer)
    torch._dynamo.config.automatic_dynamic_shapes = False
    default_max_batch = rnn_mixer.FUSED_PROJECTION_MAX_BATCH
    started = time.perf_counter()
    models, generators = {}, {}
    for name in MODELS:
        torch.manual_seed(0)
        models[name] = build_model(preset(name, args.size, block="tuned")).to(DEVICE).eval()
        for variant in VARIANTS:
            generators[name, variant] = Generator(models[name], dtype=torch.bfloat16)

    # the same prompt and tokens through both variants (batch 1; compiles the batch-1 step)
    for name, model in models.items():
        prompt = torch.randint(0, model.cfg.vocab_size, (1, 64), device=DEVICE)
        tokens = torch.randint(0, model.cfg.vocab_size, (16, 1), device=DEVICE)
        logits = {}
        for variant, max_batch in VARIANTS.items():
            rnn_mixer.FUSED_PROJECTION_MAX_BATCH = max_batch
            logits[variant] = decode_logits(generators[name, variant], prompt, tokens)
            generators[name, variant].release()
        rnn_mixer.FUSED_PROJECTION_MAX_BATCH = default_max_batch
        a, b = logits.values()
        check = {"model": name, "max_abs_logit_diff": (a - b).abs().max().item(),
                 "max_abs_logit": b.abs().max().item(),
                 "same_greedy_tokens": bool(torch.equal(a.argmax(-1), b.argmax(-1)))}
        result["checks"].append(check)
        log(f"{name}: largest logit difference between the variants {check['max_abs_logit_diff']:.3e} "
            f"(largest logit {check['max_abs_logit']:.2f}), same greedy tokens: {check['same_greedy_tokens']}")
        save()

    def measure(batch: int) -> None:
        for name in MODELS:
            for variant, max_batch in VARIANTS.items():
                rnn_mixer.FUSED_PROJECTION_MAX_BATCH = max_batch
                generator = generators[name, variant]
                runs = [benchmark_decode(generator, batch, 512, args.new_tokens, bandwidth=4.25e12)
                        for _ in range(args.repeats)]
                kernels = step_kernels(generator)
                generator.release()
                step_ms = statistics.median(r["step_ms"] for r in runs)
                projected = sum("projected_kernel" in k for k in kernels)
                row = {"model": name, "variant": variant, "batch": batch, "step_ms": step_ms,
                       "step_ms_runs": [r["step_ms"] for r in runs],
                       "decode_tok_s": batch / step_ms * 1e3, "compiled": runs[0]["compiled"],
                       "kernels_per_step": len(kernels), "projected_kernels_per_step": projected,
                       "kernel_counts": dict(Counter(kernels).most_common())}
                result["rows"].append(row)
                save()
                log(f"{name:<9} {variant:<25} batch {batch:>3}: {step_ms:.4f} ms/step "
                    f"{row['decode_tok_s']:>10.0f} tok/s  {len(kernels):>4} kernels/step "
                    f"({projected} projected)  compiled={row['compiled']}  "
                    f"[{time.perf_counter() - started:.0f} s]")
            fused, unfused = (r["step_ms"] for r in result["rows"][-2:])
            log(f"{name:<9} batch {batch:>3}: projected kernel {unfused / fused:.3f}x")
        rnn_mixer.FUSED_PROJECTION_MAX_BATCH = default_max_batch

    def kernel_table(batch: int) -> None:
        log(f"kernels of one batch-{batch} step by name, counts: {' | '.join(VARIANTS)}")
        for name in MODELS:
            counts = {r["variant"]: r["kernel_counts"] for r in result["rows"]
                      if r["model"] == name and r["batch"] == batch}
            for kernel in sorted(set().union(*counts.values())):
                per_variant = "  ".join(f"{counts[v].get(kernel, 0):>3}" for v in VARIANTS)
                log(f"  {name:<9} {per_variant}  {kernel[:120]}")

    # the first batch size, its kernels and the one-layer sweep first: the larger batches
    # cost a compilation each and are the first thing a time limit cuts
    batches = [int(b) for b in args.batch_sizes.split(",")]
    measure(batches[0])
    kernel_table(batches[0])
    kernel_sweep(build_model(preset("paragru", args.size, block="tuned")).to(DEVICE).eval(), batches,
                 log, result, save)
    for batch in batches[1:]:
        measure(batch)
    save()


if __name__ == "__main__":
    main()
