"""Context-parallel overhead: one ParaGRU layer on the whole sequence vs split over K ranks.

    PYTHONPATH=src python benchmarks/cp_overhead.py --out results/cp_overhead_cpu.json
    PYTHONPATH=src python benchmarks/cp_overhead.py --device cuda --ranks 1 2 4 \\
        --steps 65536 --batch 8 --hidden 1024 --out results/gpu/cp_overhead_h200.json

For each K in ``--ranks`` it spawns K processes (gloo on CPU, one thread each; NCCL on
GPUs, rank r on cuda:r; gloo with ranks sharing GPUs where there are fewer than K) that each hold ``steps / K`` steps and times, per call (median of
``--repeats`` after one warm-up): the forward under no_grad and forward + backward, both
with ``boundary_tol=None`` (exact: K boundary rounds) and with ``--tol``. K = 1 runs the
plain layer in one spawned process. It also records the boundary rounds taken, the chunk
solves of the last rank, and the bytes each rank contributes per all-gather. The JSON
holds the configuration, the load average (CPU runs share the machine), and one row per
(K, tol).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pararnn import NewtonConfig, ParaGRU
from pararnn.distributed import ContextParallel, time_chunk


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, repeats: int, device: torch.device, group) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if group is not None:
            dist.barrier(group)
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _backend(device: str, size: int) -> str:
    """NCCL with one GPU per rank; gloo on CPU, or where ranks must share GPUs."""
    if device == "cuda" and torch.cuda.device_count() >= size:
        return "nccl"
    return "gloo"


def _worker(rank: int, size: int, args, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    backend = _backend(args.device, size)
    device = torch.device("cpu")
    if args.device == "cuda":
        device = torch.device("cuda", rank if backend == "nccl" else rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    group = None
    if size > 1:
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=size)
    torch.manual_seed(0)
    layer = ParaGRU(args.input, args.hidden, recurrent_clip=0.5, mode="parallel",
                    newton=NewtonConfig(max_iters=args.newton_iters), device=device)
    x = time_chunk(torch.randn(args.batch, args.steps, args.input, device=device), rank, size)
    x = x.clone().requires_grad_()
    rows = []
    for tol in ([None] if size == 1 else [None, args.tol]):
        model = layer if size == 1 else ContextParallel(layer, boundary_tol=tol)

        def forward():
            with torch.no_grad():
                model(x)

        def forward_backward():
            out, h_n = model(x)
            out.square().mean().backward()

        fwd = _median_time(forward, args.repeats, device, group if size > 1 else None)
        fwdbwd = _median_time(forward_backward, args.repeats, device, group if size > 1 else None)
        row = {"ranks": size, "backend": backend if size > 1 else None, "boundary_tol": tol,
               "chunk_steps": x.shape[1],
               "forward_s": fwd, "forward_backward_s": fwdbwd}
        if size > 1:
            info = model.last_solve
            state = layer.cell.state_size
            # one all-gather per round: (composed diagonal Jacobian, end state) per batch row
            row.update(rounds=info.rounds, residual=info.residual, last_rank_solves=info.chunk_solves,
                       bytes_per_rank_per_round=2 * args.batch * state * x.element_size(),
                       bytes_per_rank_backward=2 * args.batch * state * x.element_size())
        rows.append(row)
    if size > 1:
        # the slowest rank sets the time; the last rank reports its solve count
        for row in rows:
            for key in ("forward_s", "forward_backward_s"):
                t = torch.tensor(row[key], dtype=torch.float64, device=device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                row[key] = float(t)
        if rank == size - 1:
            Path(out_file).write_text(json.dumps(rows))
        dist.barrier()
        dist.destroy_process_group()
    else:
        Path(out_file).write_text(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--newton-iters", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-5, help="the early-stopping boundary_tol")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.ranks:
            out_file = str(Path(tmp) / f"rows_{size}.json")
            mp.spawn(_worker, args=(size, args, str(Path(tmp) / f"init_{size}"), out_file), nprocs=size)
            rows += json.loads(Path(out_file).read_text())
            print(json.dumps(rows[-1]), flush=True)
    single = next((r for r in rows if r["ranks"] == 1), None)
    if single is not None:
        for row in rows:
            row["forward_vs_one_process"] = row["forward_s"] / single["forward_s"]
            row["forward_backward_vs_one_process"] = row["forward_backward_s"] / single["forward_backward_s"]
    result = {
        "command": "python benchmarks/cp_overhead.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": (torch.cuda.get_device_name(0) if args.device == "cuda"
                   else f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 thread per rank"),
        "torch": torch.__version__,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "config": vars(args),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
