"""Sequential vs parallel ParaGRU on the CPU over sequence length (time and max error).

    python benchmarks/cpu_solver.py [--steps 64 256 1024 4096] [--batch 4] [--hidden 256]
    python benchmarks/cpu_solver.py --auto-rule     # inference (no grad) over step width
    python benchmarks/cpu_solver.py --safety        # checked default vs NewtonConfig(tol=None)
    python benchmarks/cpu_solver.py --auto-rule-grad --steps 128 1024
                                                    # training (fwd+bwd) over step width

Prints a markdown table for BENCHMARKS.md; ``--out FILE`` also writes its rows as JSON,
with the thread count, the load average before and after, the torch version and the date.
"""

import argparse
import datetime
import json
import os
import platform
import time

import torch

from pararnn import NewtonConfig, ParaGRU, ParaLSTM
from pararnn.demo import compare, median_time
from pararnn.solver import api


def auto_rule_table(steps: int = 2048, repeats: int = 3) -> list[dict]:
    """No-grad forward, sequential vs parallel, over the width batch x hidden of a step."""
    print(f"ParaGRU fp32 forward under no_grad, B=1, T={steps}, input 32, median of {repeats}")
    print("| B·N | sequential (ms) | parallel (ms) | faster |")
    print("|---:|---:|---:|---|")
    rows = []
    for hidden in (16, 64, 256, 512, 1024):
        layer = ParaGRU(32, hidden, recurrent_clip=0.5)
        x = torch.randn(1, steps, 32)
        times = {}
        with torch.no_grad():
            for mode in ("sequential", "parallel"):
                layer.mode = mode
                times[mode] = median_time(lambda: layer(x), repeats) * 1e3
        faster = min(times, key=times.get)
        rows.append(dict(batch=1, steps=steps, hidden=hidden, sequential_ms=times["sequential"],
                         parallel_ms=times["parallel"]))
        print(f"| {hidden} | {times['sequential']:.1f} | {times['parallel']:.1f} | {faster} |", flush=True)
    return rows


def median_cpu_ms(fn, repeats: int) -> float:
    """Median process CPU time of ``fn`` in ms after a warm-up call: on a shared machine this
    counts this process's work only (with one thread it is the single-core time)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return sorted(times)[len(times) // 2] * 1e3


def auto_rule_grad_table(steps_list, repeats: int) -> list[dict]:
    """Forward+backward for ParaGRU and ParaLSTM layers (input = hidden, one head) at batch 8
    over the step width batch x state: autograd through the loop (``mode="sequential"``),
    the loop with its adjoint backward (what ``mode="auto"`` trains with when it picks the
    loop; forced here at every width) and Newton (``mode="parallel"``)."""
    print(f"forward+backward, B=8, median CPU time of {repeats}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| layer | T | B·state | autograd loop (ms) | loop + adjoint (ms) | parallel (ms) | faster |")
    print("|---|---:|---:|---:|---:|---:|---|")
    rows = []
    rule = api.CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD
    for name, layer_type in (("ParaGRU", ParaGRU), ("ParaLSTM", ParaLSTM)):
        for steps in steps_list:
            for hidden in (16, 64, 128, 256, 512):
                torch.manual_seed(0)
                layer = layer_type(hidden, hidden, recurrent_clip=0.5)
                x = torch.randn(8, steps, hidden, requires_grad=True)
                times = {}
                for label, mode in (("sequential", "sequential"), ("loop_adjoint", "auto"),
                                    ("parallel", "parallel")):
                    layer.mode = mode
                    api.CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD = 0  # auto: always the loop
                    try:
                        times[label] = median_cpu_ms(
                            lambda: layer(x)[0].square().mean().backward(), repeats)
                    finally:
                        api.CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD = rule
                width = 8 * layer.cell.state_size
                faster = "loop" if times["loop_adjoint"] < times["parallel"] else "parallel"
                rows.append(dict(layer=name, steps=steps, width=width, **times))
                print(f"| {name} | {steps} | {width} | {times['sequential']:.1f} "
                      f"| {times['loop_adjoint']:.1f} | {times['parallel']:.1f} | {faster} |",
                      flush=True)
    return rows


def safety_table(batch: int, hidden: int, steps_list, repeats: int) -> list[dict]:
    """Parallel ParaGRU with the checked default (error estimated, fallback if missed)
    against the unchecked NewtonConfig(tol=None): forward and forward+backward, the two
    configs timed in turns (median process CPU time of ``repeats`` each, after a warm-up:
    on a shared machine this counts this process's work only)."""
    print(f"ParaGRU fp32 parallel, input 64, B={batch}, N={hidden}, median CPU time of "
          f"{repeats} in turns, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.2f}")
    print("| T | pass | checked (ms) | unchecked (ms) | overhead |")
    print("|---:|---|---:|---:|---:|")
    rows = []
    configs = {"checked": NewtonConfig(), "unchecked": NewtonConfig(tol=None)}
    for steps in steps_list:
        layer = ParaGRU(64, hidden, recurrent_clip=0.5, mode="parallel")
        x = torch.randn(batch, steps, 64)
        for backward in (False, True):
            xg = x.clone().requires_grad_(backward)

            def call():
                if backward:
                    layer(xg)[0].sum().backward()
                else:
                    with torch.no_grad():
                        layer(x)

            samples = {name: [] for name in configs}
            for turn in range(repeats + 1):  # the first turn warms up
                for name, config in configs.items():
                    layer.newton = config
                    start = time.process_time()
                    call()
                    if turn:
                        samples[name].append(time.process_time() - start)
            times = {name: sorted(v)[len(v) // 2] * 1e3 for name, v in samples.items()}
            rows.append(dict(batch=batch, steps=steps, hidden=hidden, backward=backward,
                             checked_ms=times["checked"], unchecked_ms=times["unchecked"]))
            print(f"| {steps} | {'fwd+bwd' if backward else 'fwd'} | {times['checked']:.1f} "
                  f"| {times['unchecked']:.1f} | {100 * (times['checked'] / times['unchecked'] - 1):+.1f}% |",
                  flush=True)
    return rows


def sequence_length_table(batch: int, hidden: int, steps_list, repeats: int) -> list[dict]:
    """Sequential vs parallel ParaGRU over the sequence length: times and errors
    (:func:`pararnn.demo.compare`)."""
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; ParaGRU fp32, input 64, B={batch}, "
          f"N={hidden}, 3 Newton iterations, median of {repeats}")
    print("| T | seq fwd (ms) | par fwd (ms) | speedup | seq fwd+bwd (ms) | par fwd+bwd (ms) "
          "| speedup | max abs err (out) | max rel err (grads) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for steps in steps_list:
        r = compare(batch, steps, hidden, repeats=repeats)
        rows.append(r)
        print(f"| {steps} | {r['sequential_fwd_s'] * 1e3:.1f} | {r['parallel_fwd_s'] * 1e3:.1f} "
              f"| {r['speedup_fwd']:.2f}x | {r['sequential_fwdbwd_s'] * 1e3:.1f} "
              f"| {r['parallel_fwdbwd_s'] * 1e3:.1f} | {r['speedup_fwdbwd']:.1f}x "
              f"| {r['max_abs_diff_output']:.1e} | {r['max_rel_diff_grads']:.1e} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--auto-rule", action="store_true",
                        help="time the no-grad forward over step width instead")
    parser.add_argument("--safety", action="store_true",
                        help="time the checked default against the unchecked config instead")
    parser.add_argument("--auto-rule-grad", action="store_true",
                        help="time forward+backward over step width (ParaGRU, ParaLSTM)")
    parser.add_argument("--out", help="JSON file for the table's rows")
    args = parser.parse_args()
    load_before = os.getloadavg()
    if args.auto_rule_grad:
        table, rows = "auto_rule_grad", auto_rule_grad_table(args.steps, args.repeats)
    elif args.auto_rule:
        table, rows = "auto_rule", auto_rule_table(repeats=args.repeats)
    elif args.safety:
        table, rows = "safety", safety_table(args.batch, args.hidden, args.steps, args.repeats)
    else:
        table, rows = "sequence_length", sequence_length_table(args.batch, args.hidden, args.steps,
                                                               args.repeats)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(table=table, date=datetime.datetime.now().isoformat(timespec="seconds"),
                           threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(),
                           torch=torch.__version__, load_average_before=load_before,
                           load_average_after=os.getloadavg(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
