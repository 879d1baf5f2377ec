"""ParaLSTM's hidden output on the CPU training path: the layer's ``h`` as the C loop's own
contiguous tensor (``solve(…, hidden=True)``) against ``h`` as the stride-2 view of the
interleaved ``(c, h)`` states (the path before it), each followed by the gated RMSNorm as
in the ``tiny`` LM's mixer, forward+backward, process CPU time.

    OMP_NUM_THREADS=1 python benchmarks/cpu_lstm_hidden.py --rounds 40 --out FILE.json

Both variants run in one process, alternating call by call, so that load on a shared
machine hits both alike; the median of each over ``--rounds`` calls is reported.
"""

import argparse
import os
import statistics
import time

import torch

from pararnn import solve
from pararnn.models import build_model
from pararnn.models.config import preset

from cpu_train_step import save_report


def variants(batch: int, steps: int):
    """``{name: call}``: the two ways of getting ``h`` out of block 0's cell, each through its
    gated norm and backpropagated into the pre-activations, the gate and the parameters."""
    torch.manual_seed(0)
    model = build_model(preset("paralstm", "tiny", block="auto"))
    mixer = model.blocks[0].mixer
    cell, n = mixer.rnn.cell, mixer.rnn.hidden_size
    pre = torch.randn(batch, steps, 3 * n, requires_grad=True)
    gate = torch.randn(batch, steps, n, requires_grad=True)
    cotangent = torch.randn(batch, steps, n)

    def run(hidden_of):
        def call():
            model.zero_grad(set_to_none=True)
            pre.grad = gate.grad = None
            mixer.norm(hidden_of(pre), gate).backward(cotangent)
        return call

    return {"view of the states": run(lambda p: cell.hidden(solve(cell, p)[0])),
            "own tensor": run(lambda p: solve(cell, p, hidden=True)[0])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--out")
    args = parser.parse_args()
    report = dict(torch=torch.__version__, threads=torch.get_num_threads(),
                  load_average_before=os.getloadavg(), batch=args.batch_size,
                  seq_len=args.seq_len, rounds=args.rounds)
    calls = variants(args.batch_size, args.seq_len)
    times = {name: [] for name in calls}
    for name, call in calls.items():  # warm-up (and the C build)
        call()
    for _ in range(args.rounds):
        for name, call in calls.items():
            start = time.process_time()
            call()
            times[name].append((time.process_time() - start) * 1e3)
    report["median_cpu_ms"] = {name: statistics.median(t) for name, t in times.items()}
    for name, ms in report["median_cpu_ms"].items():
        print(f"{name:20s} {ms:7.2f} ms (median CPU time of {args.rounds})")
    save_report(report, args.out)


if __name__ == "__main__":
    main()
