"""CPU timing of the PyTorch solver path at language-model shapes, and of one LM training step.

    python benchmarks/cpu_train_step.py --out results/cpu/train_step.json
    python benchmarks/cpu_train_step.py --threads 1 2 --repeats 5 --label "after" --out ...
    python benchmarks/cpu_train_step.py --table results/cpu/train_step_*.json

Times (median of ``--repeats`` after one warm-up call, wall clock) for each torch thread
count in ``--threads``:

* ParaGRU / ParaLSTM layers (input = state width, one head; fp32) in the parallel, the
  sequential (autograd through the loop) and the auto mode (with gradients on the CPU
  from 512 x threads per step: the loop with its adjoint backward): the no-grad forward
  and forward+backward;
* one training step of ``--size`` LMs as ``pararnn train`` runs it (``block="auto"``;
  forward, backward, gradient clipping, its AdamW) at ``--batch-size`` x ``--seq-len``, one
  per model.

Writes the raw numbers (train steps: wall clock and process CPU time), the load average
before and after, and the torch version as JSON.
"""

import argparse
import json
import os
import platform
import statistics
import time

# pararnn before torch, as its CLI loads them: importing it first sets OpenMP's spin-wait
# default (pararnn/_openmp.py), which libgomp reads when torch loads it
from pararnn import ParaGRU, ParaLSTM
import torch  # noqa: E402, I001
from pararnn.models import build_model
from pararnn.models.config import preset
from pararnn.train.loop import build_optimizer

LAYER_SHAPES = ((8, 128, 256), (8, 128, 512), (4, 1024, 256))


def median_ms(fn, repeats: int, cpu_times: list | None = None) -> float:
    """Median wall-clock ms; the median process CPU ms is appended to ``cpu_times`` when given
    (on a shared machine the CPU time counts only this process's work)."""
    fn()  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    if cpu_times is not None:
        cpu_times.append(sorted(cpu)[len(cpu) // 2] * 1e3)
    return sorted(times)[len(times) // 2] * 1e3


def time_layers(repeats: int) -> list[dict]:
    rows = []
    for name, layer_type in (("paragru", ParaGRU), ("paralstm", ParaLSTM)):
        for batch, steps, width in LAYER_SHAPES:
            torch.manual_seed(0)
            layer = layer_type(width, width, recurrent_clip=0.5)
            x = torch.randn(batch, steps, width)
            for mode in ("parallel", "sequential", "auto"):
                layer.mode = mode
                with torch.no_grad():
                    fwd = median_ms(lambda: layer(x), repeats)
                xg = x.clone().requires_grad_()

                def fwd_bwd():
                    layer.zero_grad(set_to_none=True)
                    layer(xg)[0].square().mean().backward()

                rows.append(dict(layer=name, batch=batch, steps=steps, width=width, mode=mode,
                                 fwd_ms=fwd, fwd_bwd_ms=median_ms(fwd_bwd, repeats)))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def time_train_steps(models, size: str, batch: int, steps: int, repeats: int) -> list[dict]:
    rows = []
    for name in models:
        torch.manual_seed(0)
        model = build_model(preset(name, size, block="auto"))
        optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1, device=torch.device("cpu"))
        idx = torch.randint(0, model.cfg.vocab_size, (batch, steps + 1))

        def train_step():
            loss = model(idx[:, :-1], idx[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

        cpu = []
        rows.append(dict(model=name, size=size, batch=batch, seq_len=steps,
                         params=model.num_params(), step_ms=median_ms(train_step, repeats, cpu),
                         step_cpu_ms=cpu[0]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(paths) -> None:
    """Before/after markdown from JSON files of this script (medians over the files' runs)."""
    runs = {}
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        side = report["label"].split()[0]
        for run in report["runs"]:
            for row in run["layers"]:
                key = ("layer", run["threads"], row["layer"], row["batch"], row["steps"],
                       row["width"], row["mode"])
                runs.setdefault(key, {}).setdefault(side, []).append((row["fwd_ms"], row["fwd_bwd_ms"]))
            for row in run["train_steps"]:
                key = ("train", run["threads"], row["model"], row["batch"], row["seq_len"])
                runs.setdefault(key, {}).setdefault(side, []).append(
                    (row["step_ms"], row.get("step_cpu_ms", float("nan"))))
    print("| threads | layer | B×T×N | mode | fwd before | fwd after | fwd+bwd before | fwd+bwd after |")
    print("|---:|---|---|---|---:|---:|---:|---:|")
    for key, sides in runs.items():
        if key[0] != "layer" or len(sides) < 2:
            continue
        cols = [statistics.median(v[i] for v in sides[s]) for i in (0, 1) for s in ("before", "after")]
        print(f"| {key[1]} | {key[2]} | {key[3]}×{key[4]}×{key[5]} | {key[6]} | "
              + " | ".join(f"{c:.1f}" for c in cols) + " |")
    print()
    print("| threads | model | B×T | wall before (ms) | wall after (ms) | speedup "
          "| CPU before (ms) | CPU after (ms) | speedup | CPU ÷ Transformer before | after |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    medians = {key: {side: [statistics.median(v[i] for v in values) for i in (0, 1)]
                     for side, values in sides.items()}
               for key, sides in runs.items() if key[0] == "train" and len(sides) == 2}
    for key, sides in medians.items():
        (before, before_cpu), (after, after_cpu) = sides["before"], sides["after"]
        control = medians.get(key[:2] + ("transformer",) + key[3:])
        ratios = ([f"{before_cpu / control['before'][1]:.2f}", f"{after_cpu / control['after'][1]:.2f}"]
                  if control else ["", ""])
        print(f"| {key[1]} | {key[2]} | {key[3]}×{key[4]} | {before:.0f} | {after:.0f} "
              f"| {before / after:.2f}x | {before_cpu:.0f} | {after_cpu:.0f} "
              f"| {before_cpu / after_cpu:.2f}x | " + " | ".join(ratios) + " |")


def save_report(report: dict, path: str | None) -> None:
    """Add the load average after the run and write ``report`` as JSON to ``path`` (if given)."""
    report["load_average_after"] = os.getloadavg()
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump(report, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["paragru", "paralstm", "transformer"])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--label", default="", help="free text stored in the JSON (e.g. before/after)")
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--table", nargs="+", metavar="JSON",
                        help="print the before/after markdown of these files (labels 'before ...' "
                             "and 'after ...') instead of measuring")
    args = parser.parse_args()
    if args.table:
        table(args.table)
        return
    report = dict(label=args.label, torch=torch.__version__,
                  cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                  load_average_before=os.getloadavg(), runs=[],
                  # OpenMP's spin-wait as libgomp read it when torch loaded
                  openmp_env={k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")})
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"--- {threads} thread(s), load average {os.getloadavg()}", flush=True)
        report["runs"].append(dict(
            threads=threads, load_average=os.getloadavg(),
            layers=[] if args.skip_layers else time_layers(args.repeats),
            train_steps=time_train_steps(args.models, args.size, args.batch_size, args.seq_len,
                                         args.repeats)))
    save_report(report, args.out)


if __name__ == "__main__":
    main()
