"""Language-model training speed: tokens/s, MFU and peak memory of one training step of each
model, side by side in one process, as ``pararnn train`` runs it (the same model presets and
default blocks, bf16 autocast, fused AdamW with the training loop's parameter groups,
gradient clipping).

    PYTHONPATH=src python benchmarks/gpu_lm_speed.py --out DIR [--sizes small,medium]
        [--seq-lens 512,4096] [--compile off|on|both|graphs|all] [--steps 20] [--profile [--save-traces]]

Every step sees the same number of tokens (``--tokens-per-step``, 16,384 = 32 x 512 as in
RESULTS.md), so a longer sequence means a smaller batch. Data are random token ids: speed
does not depend on the text. Per (size, sequence length, model, eager/compiled/graphs, the
last ``pararnn train --compile --cuda-graph``, i.e. ``torch.compile(mode="reduce-overhead")``:
the compiled step replayed as CUDA graphs, so what the GPU alone takes once launches cost
the host nothing): warm-up
steps (compilation, Triton autotuning), then the median over ``--steps`` steps, each timed
with CUDA events from the batch upload to the optimizer step, and the median host time of
those steps (the CPU's time to issue a step: unless the step synchronises, which the
profile counts, a host time near the step time means the GPU waited for the host). The
Transformer uses PyTorch's SDPA (flash attention on an H200). Compiled rows also record
the graphs Dynamo made (``graphs``) and its graph-break reasons with counts
(``graph_breaks``): each break is host work between graphs. Writes ``DIR/lm_speed.json``
after every row.

``--profile``: then one more step under ``torch.profiler`` (CPU and CUDA activities): its
CUDA kernel time by kind (:data:`KERNEL_KINDS`: GEMM, attention, the ParaRNN solve,
Mamba's SSD, convolution, the fused gated norm, optimizer with the gradient clip, the
rest: other norms, elementwise, loss), kernel count, GPU busy time (the union of kernel and copy intervals), host
synchronisations inside the step, and the largest host costs by self CPU time
(``host_ops``); in the JSON row under ``profile`` and printed below the row. ``--save-traces`` also writes each step's Chrome trace to
``DIR/trace_<model>_<size>_T<len>_<mode>.json.gz`` (Perfetto, chrome://tracing).

Each row also times the same steps back to back between two CUDA events (``pipelined_ms``,
``pipelined_tok_per_s``), as ``pararnn train`` issues them: it waits for the GPU only to
log, so the host may run ahead and a step costs max(host, GPU) rather than their sum. The
per-step timing above adds the host's latency to each step (the GPU waits for the first
launch); the pipelined rate is the training throughput. ``--host-profile STEPS`` then runs
STEPS more steps under ``cProfile``: the host's Python functions by own and cumulative time
per step (``host_profile``), to find what the host does besides launching.

``--min-seg-lens 256,128,64`` runs each ParaRNN row once per value of the fused kernels'
shortest time segment (``_fused_common.MIN_SEG_LEN``): at T=512 the shipped 256 makes one
512-step walk per chain, 128 and 64 split it into 4 or 8 segments when batch x channels
leave room (the launch plan's rule), so the LM-level effect of the plan is measured in one run.
``--tiles 'shipped;gru_fwd=32/1/4/3,gru_bwd=32/1/4/3'`` does the same for the kernels' tiles
(``_fused_common.CUDA_TILES``: channels per program, warps, steps per block, load-pipeline
stages; a set gives
each named kernel that one tile at every plan), e.g. one
channel per thread where the one-walk plan leaves two warps per SM. Each row records its
variant in ``plan_variant``.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

import torch
from torch._dynamo.utils import counters

from gpu_profile import parse_tiles
from pararnn.kernels import _fused_common
from pararnn.models import build_model, preset
from pararnn.models.flops import peak_flops, train_flops_per_token
from pararnn.train.loop import autocast_for, optimizer_groups
from pararnn.train.loop import compiled as training_forward

MODELS = ("transformer", "mamba2", "paragru", "paralstm")

# Kernel kinds by (lowercase) substrings of CUDA kernel names; the first kind that
# matches wins, so conv and attention precede gemm (cuDNN's implicit-GEMM convolutions,
# fmha_cutlass*). Not a bare "conv": inductor names its kernels after the ops they fuse,
# and convert_element_type is in many. GEMMs: cuBLAS (nvjet_*, sm90_xmma_gemm_*, cutlass
# kernels, split-K reductions) and inductor's matmul templates (triton_tem_*); ParaRNN:
# the fused walk and boundary kernels (kernels/paragru.py, paralstm.py, _fused_common.py);
# Mamba: mamba-ssm's SSD kernels; conv: cuDNN's and the fused causal conv's (_conv1d_*,
# kernels/causal_conv.py); norm: the fused gated norm after the cell (kernels/gated_norm.py;
# inductor's norms are "other"); optimizer: the fused AdamW and the foreach
# gradient-norm clip (multi_tensor_apply_kernel, lpnorm_cleanup).
KERNEL_KINDS = (
    ("optimizer", ("multi_tensor_apply", "adam", "lpnorm")),
    ("attention", ("flash", "fmha", "sdpa", "attention")),
    ("pararnn", ("_gru_fwd", "_gru_bwd", "_lstm_fwd", "_lstm_bwd", "_boundary_")),
    ("mamba", ("_chunk_scan", "_chunk_state", "_chunk_cumsum", "_bmm_chunk", "_state_passing")),
    ("conv", ("convolution", "conv1d", "conv2d", "depthwise", "fprop", "dgrad", "wgrad")),
    ("norm", ("_gated_norm_",)),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "splitkreduce", "triton_tem_", "cublas")),
)
OTHER = "other"  # norms, elementwise, reductions, the loss: what inductor fuses
COPIES = "memcpy/memset"
KINDS = ("gemm", "attention", "pararnn", "mamba", "conv", "norm", OTHER, "optimizer", COPIES)  # as printed
OURS = ("pararnn", "conv", "norm")  # kinds whose kernels are (mostly) pararnn's: listed by name
GRAPHS = "reduce-overhead"  # --compile graphs: torch.compile's mode with CUDA graphs


def mode_name(compiled: bool | str) -> str:
    """A row's mode as printed: eager, compiled or graphs (compiled, replayed as CUDA graphs)."""
    return {False: "eager", True: "compiled", GRAPHS: "graphs"}[compiled]

STEP_RANGE = "lm_training_step"  # the record_function range around the profiled step
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
              "cuStreamSynchronize", "cuCtxSynchronize", "cudaMemcpy")


def kernel_kind(name: str) -> str:
    """The :data:`KERNEL_KINDS` kind of a CUDA kernel, :data:`OTHER` if none matches."""
    lower = name.lower()
    for kind, patterns in KERNEL_KINDS:
        if any(p in lower for p in patterns):
            return kind
    return OTHER


def busy_ms(intervals) -> float:
    """Length of the union of ``(start, end)`` intervals in microseconds, in ms."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total / 1e3


def profile_breakdown(events: list[dict]) -> dict:
    """One profiled step from its Chrome trace events (``torch.profiler``'s export): CUDA
    time per kernel kind (ms), kernel count, GPU busy ms (kernels and copies may overlap
    on several streams: their union) and host synchronisations inside the step's
    :data:`STEP_RANGE` range (None if the trace lacks it), and the kernels of kind
    :data:`OTHER` by name, largest first (``other_kernels``: name, ms, count; the top 20):
    what the kind tables leave unnamed; the same for ParaRNN's own kernels (kinds
    :data:`OURS`: ``ours_kernels``), the solve's forward and backward apart."""
    by_kind = dict.fromkeys(KINDS, 0.0)
    intervals, kernels, others, ours = [], 0, {}, {}
    for e in events:
        category = str(e.get("cat", "")).lower()
        if e.get("ph") != "X" or category not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        kernels += category == "kernel"
        kind = kernel_kind(e["name"]) if category == "kernel" else COPIES
        by_kind[kind] += e["dur"] / 1e3
        named = others if kind == OTHER else ours if kind in OURS else None
        if named is not None:
            ms, count = named.get(e["name"], (0.0, 0))
            named[e["name"]] = (ms + e["dur"] / 1e3, count + 1)
        intervals.append((e["ts"], e["ts"] + e["dur"]))
    other_kernels, ours_kernels = ([{"name": name, "ms": ms, "count": count} for name, (ms, count)
                                    in sorted(named.items(), key=lambda item: -item[1][0])[:20]]
                                   for named in (others, ours))
    step = [e for e in events if e.get("ph") == "X" and e.get("name") == STEP_RANGE
            and str(e.get("cat", "")).lower() == "user_annotation"]
    syncs = None
    if step:
        start, end = step[0]["ts"], step[0]["ts"] + step[0]["dur"]
        syncs = sum(1 for e in events if e.get("ph") == "X" and e.get("name") in SYNC_CALLS
                    and start <= e["ts"] <= end)
    return {"kernels": kernels, "kernel_ms": sum(by_kind.values()), "busy_ms": busy_ms(intervals),
            "by_kind_ms": by_kind, "syncs": syncs, "other_kernels": other_kernels,
            "ours_kernels": ours_kernels}


def format_profile(row: dict) -> str:
    """One printed line: what a profiled row says about host and GPU time."""
    p, step = row["profile"], row["step_ms"]
    syncs = "?" if p["syncs"] is None else p["syncs"]
    return (f"      profile: {p['kernels']} kernels, {p['kernel_ms']:.2f} ms of kernels, GPU busy "
            f"{p['busy_ms']:.2f} ms ({p['busy_ms'] / step:.0%} of the step), host {row['host_ms']:.2f} ms "
            f"({row['host_ms'] / step:.0%}), {syncs} host syncs")


def profile_table(rows: list[dict]) -> str:
    """The profiled rows as a Markdown table: CUDA ms per step by kernel kind, then
    kernels, GPU busy, host and step ms."""
    rows = [r for r in rows if "profile" in r]
    head = ["model", "T", "mode", *KINDS, "kernels", "GPU busy", "host", "step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in rows:
        p = r["profile"]
        variant = r.get("plan_variant") or (r.get("min_seg_len") and f"seg{r['min_seg_len']}")
        label = r["model"] + (f" @{variant}" if variant else "")
        cells = [label, str(r["seq_len"]), mode_name(r["compiled"]),
                 *(f"{p['by_kind_ms'][kind]:.2f}" for kind in KINDS), str(p["kernels"]),
                 f"{p['busy_ms']:.2f}", f"{r['host_ms']:.2f}", f"{r['step_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def host_ops(averages, top: int = 25) -> list[dict]:
    """The ``top`` entries of a profile's ``key_averages()`` by self CPU time: where the host
    spends a step (operators, the CUDA driver and runtime calls that launch kernels, the
    Python of registered ops, which their self time includes)."""
    rows = sorted(averages, key=lambda a: a.self_cpu_time_total, reverse=True)[:top]
    return [{"name": a.key, "count": a.count, "self_cpu_us": a.self_cpu_time_total,
             "cpu_total_us": a.cpu_time_total} for a in rows]


def format_host_ops(row: dict, top: int = 12) -> str:
    """The profiled row's largest host costs, one line each (the profiler inflates them all),
    then its largest kernels of kind :data:`OTHER` and of pararnn's own."""
    profile = row["profile"]
    return "\n".join([f"        host: {op['self_cpu_us'] / 1e3:7.2f} ms self in {op['count']:4d} x {op['name'][:70]}"
                      for op in profile.get("host_ops", [])[:top]]
                     + [f"        other kernel: {k['ms']:6.3f} ms in {k['count']:4d} x {k['name'][:70]}"
                        for k in profile.get("other_kernels", [])[:top]]
                     + [f"        our kernel: {k['ms']:6.3f} ms in {k['count']:4d} x {k['name'][:70]}"
                        for k in profile.get("ours_kernels", [])[:top]])


def profile_step(step, index: int, trace_path: str | None) -> dict:
    """:func:`profile_breakdown` of ``step(index)`` under the profiler (after warm-up), with
    its :func:`host_ops`."""
    from torch.profiler import ProfilerActivity, profile, record_function
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function(STEP_RANGE):
            step(index)
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            text = f.read()
    if trace_path is not None:
        with gzip.open(trace_path, "wt") as f:
            f.write(text)
    return {**profile_breakdown(json.loads(text)["traceEvents"]), "host_ops": host_ops(prof.key_averages())}


def measure(model_name: str, size: str, seq_len: int, tokens_per_step: int, steps: int, warmup: int,
            compiled: bool | str, device: torch.device, profile: bool = False,
            trace_path: str | None = None, block: str = "auto", host_profile: int = 0) -> dict:
    torch.manual_seed(0)
    model = build_model(preset(model_name, size, vocab_size=320, block=block)).to(device)
    optimizer = torch.optim.AdamW(optimizer_groups(model, lr=1e-3, weight_decay=0.1), lr=1e-3,
                                  betas=(0.9, 0.95), fused=True)
    # as `pararnn train [--compile [--cuda-graph]]`
    forward = training_forward(model, compiled is not False, cuda_graph=compiled == GRAPHS)
    autocast = autocast_for(device, "auto")
    batch = tokens_per_step // seq_len
    tokens = torch.randint(0, 320, (steps + warmup + 1, batch, seq_len + 1), device="cpu").pin_memory()

    def step(i: int) -> None:
        if compiled == GRAPHS:  # a new training step: the last one's graph outputs are dead
            torch.compiler.cudagraph_mark_step_begin()
        xy = tokens[i].to(device, non_blocking=True)
        with autocast:
            loss = forward(xy[:, :-1], xy[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    counters["graph_break"].clear()
    counters["stats"].clear()
    started = time.perf_counter()
    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - started  # with compilation and autotuning
    # what compiling made of the forward: several graphs per step mean host work between them
    graphs = {"graphs": counters["stats"]["unique_graphs"],
              "graph_breaks": dict(counters["graph_break"])} if compiled else {}
    torch.cuda.reset_peak_memory_stats()
    times, host = [], []
    for i in range(warmup, warmup + steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        issued = time.perf_counter()
        start.record()
        step(i)
        host.append(time.perf_counter() - issued)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    # the same steps back to back, as the training loop issues them (it waits for the GPU
    # only to log): the host may run ahead, so this is max(host, GPU) per step, not their sum
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(warmup, warmup + steps):
        step(i)
    end.record()
    end.synchronize()
    pipelined = start.elapsed_time(end) / 1e3 / steps
    seconds = statistics.median(times)
    peak = peak_flops(device)
    flops = train_flops_per_token(model, seq_len)
    row = {"model": model_name, "block": block, "size": size, "seq_len": seq_len, "batch": batch,
           "compiled": compiled, "params": model.num_params(), "step_ms": seconds * 1e3,
           "host_ms": statistics.median(host) * 1e3, "tok_per_s": tokens_per_step / seconds,
           "pipelined_ms": pipelined * 1e3, "pipelined_tok_per_s": tokens_per_step / pipelined,
           "mfu": tokens_per_step / seconds * flops / peak if peak else None,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30, "warmup_s": warmup_s, **graphs}
    if profile:
        row["profile"] = profile_step(step, warmup + steps, trace_path)
    if host_profile:  # the timed steps' batches again, as many times as it takes
        row["host_profile"] = host_profile_steps(
            step, [warmup + i % steps for i in range(host_profile)])
    return row


def host_profile_steps(step, indices, top: int = 40, sync=torch.cuda.synchronize) -> dict:
    """Where the host's time goes in the steps ``indices``, back to back under ``cProfile``
    (Python functions and the C calls they make; the profiler slows Python itself, so
    compare functions, not totals): the ``top`` functions by own time and by cumulative
    time, each as (function, calls per step, own ms per step, cumulative ms per step)."""
    import cProfile
    import pstats
    profiler = cProfile.Profile()
    sync()
    profiler.enable()
    for i in indices:
        step(i)
    sync()
    profiler.disable()
    n = len(indices)
    entries = [(f"{os.path.basename(file)}:{line}({name})", calls / n, own * 1e3 / n, cum * 1e3 / n)
               for (file, line, name), (_, calls, own, cum, _) in pstats.Stats(profiler).stats.items()]
    return {"steps": n,
            "by_own": sorted(entries, key=lambda e: -e[2])[:top],
            "by_cumulative": sorted(entries, key=lambda e: -e[3])[:top]}


def format_host_profile(row: dict, top: int = 25) -> str:
    """The host profile's largest functions by own time, one line each."""
    return "\n".join(f"        py: {own:7.3f} ms own {cum:7.3f} cum {calls:6.0f} x {name[:80]}"
                     for name, calls, own, cum in row["host_profile"]["by_own"][:top])


def plan_variants(spec: str, min_seg_lens: str, tiles: str) -> list[tuple[str | None, dict]]:
    """The launch-plan variants to run ``spec`` with, as (label, overrides of
    :mod:`pararnn.kernels._fused_common` constants): one per ``--min-seg-lens`` value
    (``MIN_SEG_LEN``) and one per ``--tiles`` set (the named kernels' entries of
    ``CUDA_TILES`` replaced by that one tile for every plan; ``shipped`` for none); a model
    without fused kernels, or no variants asked for, runs the shipped plan only (label
    None)."""
    if spec.partition(":")[0] not in ("paragru", "paralstm") or not (min_seg_lens or tiles):
        return [(None, {})]
    variants = [(f"seg{v}", {"MIN_SEG_LEN": int(v)}) for v in min_seg_lens.split(",") if v]
    for tile_set in filter(None, tiles.split(";")):
        if tile_set == "shipped":
            variants.append(("shipped", {}))
            continue
        try:
            chosen = parse_tiles(tile_set)  # the sweep's syntax, one tile per kernel here
        except argparse.ArgumentTypeError as err:
            raise SystemExit(str(err)) from None
        several = [kernel for kernel, kernel_tiles in chosen.items() if len(kernel_tiles) > 1]
        if several:
            raise SystemExit(f"--tiles: one tile per kernel in a set, got several for {', '.join(several)} "
                             "(separate sets with ';')")
        table = dict(_fused_common.CUDA_TILES)
        table.update({kernel: ((None, tile),) for kernel, (tile,) in chosen.items()})
        variants.append((f"tiles:{tile_set}", {"CUDA_TILES": table}))
    return variants


def set_plan_constants(overrides: dict) -> dict:
    """Set :mod:`._fused_common` constants; returns their previous values. The plan cache
    is cleared: the tile tables are not part of its key."""
    previous = {name: getattr(_fused_common, name) for name in overrides}
    for name, value in overrides.items():
        setattr(_fused_common, name, value)
    _fused_common._cached_plan.cache_clear()
    return previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated MODEL or MODEL:BLOCK (default block: auto, as "
                        "`pararnn train`), e.g. paragru,paragru:tuned for the hybrid and the "
                        "purely recurrent ParaGRU")
    parser.add_argument("--sizes", default="small")
    parser.add_argument("--seq-lens", default="512,4096")
    parser.add_argument("--tokens-per-step", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", choices=("off", "on", "both", "graphs", "all"), default="off",
                        help="eager (off), torch.compile as `pararnn train --compile` (on), both; "
                        "graphs: torch.compile(mode='reduce-overhead'), the compiled step replayed "
                        "as CUDA graphs (no host launch cost: what the GPU alone takes); all three")
    parser.add_argument("--profile", action="store_true",
                        help="profile one more step of each row: CUDA time by kernel kind, host vs GPU")
    parser.add_argument("--host-profile", type=int, default=0, metavar="STEPS",
                        help="then run STEPS more steps under cProfile: the host's Python functions by "
                        "own and cumulative time per step (JSON row: host_profile)")
    parser.add_argument("--save-traces", action="store_true",
                        help="with --profile, also write each profiled step's Chrome trace into --out")
    parser.add_argument("--min-seg-lens", default="",
                        help="comma-separated values of the fused kernels' MIN_SEG_LEN to run each "
                        "ParaRNN row with (the launch plan's shortest time segment; default: the "
                        "shipped one), e.g. 256,128,64: shorter segments split short sequences")
    parser.add_argument("--tiles", default="",
                        help="';'-separated sets of fused-kernel tiles to run each ParaRNN row "
                        "with, each a comma list KERNEL=BLOCK_N/WARPS/STEPS_PER_BLOCK/STAGES (kernels "
                        "gru_fwd, gru_bwd, lstm_fwd, lstm_bwd) or 'shipped', e.g. "
                        "'shipped;gru_fwd=32/1/4/3,gru_bwd=32/1/4/3,lstm_fwd=32/1/4/3'")
    args = parser.parse_args()
    if args.host_profile < 0:
        parser.error(f"--host-profile must be >= 0 steps, got {args.host_profile}")
    if not torch.cuda.is_available():
        sys.exit("gpu_lm_speed.py needs a CUDA GPU")
    device = torch.device("cuda")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "lm_speed.json")
    modes = {"off": [False], "on": [True], "both": [False, True], "graphs": [GRAPHS],
             "all": [False, True, GRAPHS]}[args.compile]
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "command": " ".join(sys.argv), "rows": []}
    print(f"{'size':>6} {'T':>5} {'model':>14} {'mode':>8} {'step ms':>8} {'host ms':>8} {'tok/s':>10} "
          f"{'MFU':>6} {'GiB':>6} {'piped ms':>9} {'piped tok/s':>10}")
    for size in args.sizes.split(","):
        for seq_len in map(int, args.seq_lens.split(",")):
            for compiled in modes:
                for spec, (variant, overrides) in [
                        (spec, v) for spec in args.models.split(",")
                        for v in plan_variants(spec, args.min_seg_lens, args.tiles)]:
                    name, _, block = spec.partition(":")
                    block = block or "auto"
                    if variant is not None:
                        spec = f"{spec}@{variant}"
                    previous = set_plan_constants(overrides)
                    mode = mode_name(compiled)
                    suffix = "" if variant is None else "_" + re.sub(r"[^A-Za-z0-9]+", "-", variant)
                    trace = (os.path.join(args.out, f"trace_{name}_{block}{suffix}_{size}_T{seq_len}_{mode}.json.gz")
                             if args.profile and args.save_traces else None)
                    try:
                        row = measure(name, size, seq_len, args.tokens_per_step, args.steps, args.warmup,
                                      compiled, device, args.profile, trace, block, args.host_profile)
                    except Exception as error:  # one failing row must not lose the others
                        row = {"model": name, "block": block, "size": size, "seq_len": seq_len,
                               "compiled": compiled,
                               "error": f"{type(error).__name__}: {error}"[:500]}
                        print(f"{size:>6} {seq_len:>5} {spec:>14} {mode:>8} ERROR {row['error'][:120]}",
                              flush=True)
                    else:
                        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
                        print(f"{size:>6} {seq_len:>5} {spec:>14} {mode:>8} {row['step_ms']:8.2f} "
                              f"{row['host_ms']:8.2f} {row['tok_per_s']:10,.0f} {mfu:>6} "
                              f"{row['peak_mem_gib']:6.2f} {row['pipelined_ms']:9.2f} "
                              f"{row['pipelined_tok_per_s']:10,.0f}", flush=True)
                        if row.get("graph_breaks"):
                            print(f"      {row['graphs']} graphs, breaks: {row['graph_breaks']}", flush=True)
                        if "profile" in row:
                            print(format_profile(row), flush=True)
                            print(format_host_ops(row), flush=True)
                        if "host_profile" in row:
                            print(format_host_profile(row), flush=True)
                    row["plan_variant"] = variant  # None: the shipped plan
                    set_plan_constants(previous)
                    record["rows"].append(row)
                    with open(path, "w") as f:
                        json.dump(record, f, indent=1)
                    torch._dynamo.reset()
                    torch.cuda.empty_cache()
    if args.profile:
        print("\nCUDA ms per step by kernel kind (profiled step), host and step ms (median):\n"
              + profile_table(record["rows"]))


if __name__ == "__main__":
    main()
