"""The ParaGRU step loop's forward on the CPU four ways: the PyTorch loop LoopSolve runs
without C (``taping_stepper``), ``torch.compile`` (inductor's C++ backend) of one step
called per step, of a chunk of ``k`` steps called per chunk, and the C loop
(``pararnn.cells.cpu_loop``); plus inductor's ``tanh``/``sigmoid`` against ATen's.

    python benchmarks/cpu_loop_compile.py --out results/cpu/loop_compile_cpu4.json

Median process CPU ms of ``--repeats`` after a warm-up call, 1 thread, fp32, no grad; the
compile (and C build) times are wall clock of the first call.
"""

import argparse
import os
import time

import torch

from pararnn.cells import ParaGRUCell

from cpu_solver import median_cpu_ms as cpu_ms
from cpu_train_step import save_report


def first_call_s(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def gru_step(zr, u_h, h, a_zr, a_h):
    """The taping stepper's step as a pure function (without writing a tape)."""
    z, r = torch.sigmoid(zr + a_zr * h.unsqueeze(-2)).unbind(-2)
    return torch.lerp(h, torch.tanh(u_h + r * (a_h * h)), z)


def gru_chunk(pre, h, a_zr, a_h):
    states = []
    for t in range(pre.shape[1]):
        h = gru_step(pre[:, t, :2], pre[:, t, 2], h, a_zr, a_h)
        states.append(h)
    return torch.stack(states, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch, steps, n = args.batch, args.steps, args.hidden
    cell = ParaGRUCell(n, recurrent_clip=0.5)
    x = torch.randn(batch, steps, 3 * n)
    h0 = torch.zeros(batch, n)
    report = dict(torch=torch.__version__, load_average_before=os.getloadavg(),
                  shape=[batch, steps, n], rows={})
    rows = report["rows"]

    def record(name, ms, **extra):
        rows[name] = dict(cpu_ms=ms, **extra)
        extras = " ".join(f"{key}={value:.2f}" for key, value in extra.items())
        print(f"{name:28s} {ms:8.2f} ms {extras}", flush=True)

    with torch.no_grad():
        def eager():
            step, _ = cell.taping_stepper(x)
            h = h0
            for t in range(steps):
                h = step(t, h)

        record("pytorch loop", cpu_ms(eager, args.repeats))
        a = cell.recurrent_weights()
        pre = (x.unflatten(-1, (3, n)) + cell.bias).contiguous()
        step = torch.compile(gru_step, dynamic=False)
        compile_s = first_call_s(lambda: step(pre[:, 0, :2], pre[:, 0, 2], h0, a[:2], a[2]))

        def per_step():
            h = h0
            for t in range(steps):
                h = step(pre[:, t, :2], pre[:, t, 2], h, a[:2], a[2])

        record("compiled step", cpu_ms(per_step, args.repeats), compile_s=compile_s)
        for k in args.chunks:
            chunk = torch.compile(gru_chunk, dynamic=False)
            compile_s = first_call_s(lambda: chunk(pre[:, :k], h0, a[:2], a[2]))

            def chunked():
                h = h0
                for start in range(0, steps, k):
                    h = chunk(pre[:, start:start + k], h, a[:2], a[2])[:, -1]

            record(f"compiled chunk of {k}", cpu_ms(chunked, args.repeats), compile_s=compile_s)
        build_s = first_call_s(lambda: cell.compiled_loop(x))
        loop = cell.compiled_loop(x)
        if loop is not None:
            parameters = dict(cell.named_parameters())
            record("C loop", cpu_ms(lambda: loop.forward(parameters, x, h0), args.repeats),
                   build_s=build_s)
        probe = torch.randn(batch, 32, 3, n)
        for name, fn in (("tanh", torch.tanh), ("sigmoid", torch.sigmoid)):
            compiled = torch.compile(lambda v, fn=fn: fn(v), dynamic=False)
            record(f"{name} (B, 32, 3N) aten", cpu_ms(lambda: fn(probe), args.repeats))
            record(f"{name} (B, 32, 3N) inductor", cpu_ms(lambda: compiled(probe), args.repeats))
    save_report(report, args.out)


if __name__ == "__main__":
    main()
