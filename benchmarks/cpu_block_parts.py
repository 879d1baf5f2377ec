"""Where one block's training time goes on the CPU: forward+backward of each part of block 0
of a ``tiny`` LM (``block="auto"``), median and minimum process CPU time.

    python benchmarks/cpu_block_parts.py --models paragru paralstm transformer --out FILE.json

Parts of a ParaRNN mixer: the input projection (d -> 2n, also the gate), the causal conv +
SiLU, the cell's multi-head projection, the cell (solve, ``mode="auto"``, returning what the
layer outputs: ParaLSTM's ``h``), the gated
RMSNorm, the output projection; of the Transformer: the mixer (attention with its
projections); both: the SwiGLU, one RMSNorm, the whole block. Inputs are random; each part
is timed alone (its input a leaf), so the parts do not add up to the block exactly.
Run it against another tree with ``PYTHONPATH=that/src`` for a before/after.
"""

import argparse
import inspect
import os
import time

import torch
import torch.nn.functional as F

from pararnn import solve
from pararnn.models import build_model
from pararnn.models.config import preset

from cpu_train_step import save_report


def cpu_ms(fn, repeats: int) -> tuple[float, float]:
    """(median, min) process CPU ms of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append((time.process_time() - start) * 1e3)
    times.sort()
    return times[len(times) // 2], times[0]


def forward_backward(model, fn, *inputs):
    """A call that runs ``fn(*inputs)`` and backpropagates a fixed random cotangent into the
    inputs and ``model``'s parameters, gradients reset first (as a training step does)."""
    out = fn(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))

    def run():
        model.zero_grad(set_to_none=True)
        for tensor in inputs:
            tensor.grad = None
        result = fn(*inputs)
        (result[0] if isinstance(result, tuple) else result).backward(cotangent)

    return run


def leaf(*shape):
    return torch.randn(*shape).requires_grad_()


def cell_output(cell, pre):
    """The cell's output as the layer returns it: ``solve(…, hidden=True)`` where the tree
    under test has it, else the hidden part of all the states (ParaLSTM's strided ``h``)."""
    if "hidden" in inspect.signature(solve).parameters:
        return solve(cell, pre, hidden=True)[0]
    states = solve(cell, pre)[0]
    return cell.unpack_state(states)[0] if hasattr(cell, "unpack_state") else states


def parts(model_name: str, batch: int, steps: int):
    torch.manual_seed(0)
    model = build_model(preset(model_name, "tiny", block="auto"))
    block = model.blocks[0]
    d = model.cfg.d_model
    x = leaf(batch, steps, d)
    found = {}
    if model.cfg.is_rnn:
        mixer = block.mixer
        n = mixer.rnn.hidden_size
        conv = mixer.conv
        # the tree under test may or may not fuse SiLU into the conv
        fused = "silu" in inspect.signature(conv.forward).parameters
        conv_silu = (lambda u: conv(u, silu=True)) if fused else (lambda u: F.silu(conv(u)))
        both = leaf(batch, steps, 2 * n)
        pre = leaf(batch, steps, 3 * n)
        y = leaf(batch, steps, n)
        found["in_proj"] = forward_backward(model, mixer.in_proj, x)
        found["conv+silu"] = forward_backward(model, lambda b: conv_silu(b[..., :n]), both)
        found["cell projection"] = forward_backward(model, mixer.rnn.projection, leaf(batch, steps, n))
        found["cell"] = forward_backward(model, lambda p: cell_output(mixer.rnn.cell, p), pre)
        found["gated norm"] = forward_backward(model, lambda h, b: mixer.norm(h, b[..., n:]), y, both)
        found["out_proj"] = forward_backward(model, mixer.out_proj, y)
    found["mixer"] = forward_backward(model, block.mixer, x)
    if block.mlp is not None:
        found["swiglu"] = forward_backward(model, block.mlp, x)
    found["rmsnorm"] = forward_backward(model, block.norm1, x)
    found["block"] = forward_backward(model, block, x)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["paragru", "paralstm", "transformer"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--label", default="")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = dict(label=args.label, torch=torch.__version__, threads=args.threads,
                  load_average_before=os.getloadavg(), models={})
    for name in args.models:
        rows = {}
        for part, fn in parts(name, args.batch_size, args.seq_len).items():
            median, low = cpu_ms(fn, args.repeats)
            rows[part] = dict(median_ms=median, min_ms=low)
            print(f"{name:12s} {part:16s} median {median:7.2f} ms  min {low:7.2f} ms", flush=True)
        report["models"][name] = rows
    save_report(report, args.out)


if __name__ == "__main__":
    main()
