"""Fused ParaGRU / ParaLSTM kernels on a CUDA GPU: times next to the memory floor.

    PYTHONPATH=src python benchmarks/gpu_fused.py [--sections main,layers,...] [--json out.json]

Prints markdown tables: per cell and shape, the fused segmented-Newton forward, the
fused sequential forward, the PyTorch-reference Newton (torch odd-even scan), the memory
floor (bytes that must move, at the copy bandwidth measured in this run), and
forward+backward; cuDNN ``torch.nn.GRU``/``LSTM`` and a naive per-step PyTorch loop at
8x4096x1024; the accuracy of each solve against a float64 sequential reference; and a
speedup-vs-T sweep (written to the JSON file; ``--plot JSON --png PATH`` draws it). Times
are medians of ``triton.testing.do_bench``; inputs that fit in L2 are rotated among
several copies. ``--sections`` picks and orders the parts (the JSON file is
rewritten after each, so a run cut short keeps what it finished); ``tune`` sweeps launch
plans at every shape, ``narrow`` only segment length, warm-up and channel block at the
long, narrow shapes, by GPU time (CUDA-graph replay).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time

import torch

from cuda_timing import graph_median_ms

SHAPES = [(8, 4096, 1024), (64, 2048, 2048), (1, 65536, 256)]
SWEEP_T = [256, 1024, 4096, 16384]


def bench(fn, rotate=1):
    import triton.testing
    if rotate > 1:
        state = {"i": 0}

        def call():
            state["i"] = (state["i"] + 1) % rotate
            fn(state["i"])
        return triton.testing.do_bench(call, warmup=30, rep=200, return_mode="median")
    return triton.testing.do_bench(lambda: fn(0), warmup=30, rep=200, return_mode="median")


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 2 GiB device-to-device copy."""
    src = torch.randn(2**29, device="cuda")
    dst = torch.empty_like(src)
    ms = bench(lambda i: dst.copy_(src))
    del src, dst
    return 2 * 2**31 / (ms * 1e-3)


class Problem:
    """Random inputs for one cell and shape (``copies`` rotated copies if small)."""

    def __init__(self, kind, B, T, N, dtype=torch.float32, copies=1):
        from pararnn.cells import ParaGRUCell, ParaLSTMCell
        self.kind, self.B, self.T, self.N = kind, B, T, N
        self.width = 1 if kind == "gru" else 2
        cls = ParaGRUCell if kind == "gru" else ParaLSTMCell
        self.cell = cls(N, recurrent_clip=0.9, device="cuda")
        self.pre = [torch.randn(B, T, 3 * N, device="cuda").to(dtype) for _ in range(copies)]
        self.h0 = torch.randn(B, self.width * N, device="cuda") * 0.5
        if kind == "gru":
            self.w = (self.cell.recurrent_weights().detach(),)
        else:
            self.w = tuple(w.detach() for w in self.cell.recurrent_weights())
        self.copies = copies

    @property
    def mod(self):
        from pararnn.kernels import paragru, paralstm
        return paragru if self.kind == "gru" else paralstm

    def newton(self, i=0, **kw):
        return self.mod.newton_forward(self.pre[i], *self.w, self.h0, None, 3, **kw)

    def sequential(self, i=0, **kw):
        return self.mod.sequential_forward(self.pre[i], *self.w, self.h0, None, **kw)

    def backward(self, H, gH, i=0, **kw):
        return self.mod.backward(self.pre[i], *self.w, self.h0, None, H, gH, **kw)

    def torch_newton(self, i=0):
        from pararnn.solver import NewtonConfig, solve
        with torch.no_grad():
            return solve(self.cell, self.pre[i], self.h0, mode="parallel", backend="torch",
                         newton=NewtonConfig(max_iters=3))[0]

    def floor_bytes(self, backward=False):
        el = self.B * self.T * self.N
        pre = el * 3 * self.pre[0].element_size()
        states = el * self.width * 4
        fwd = pre + states
        # backward: read pre, H, dL/dH; write grad_pre (fp32)
        return fwd + (pre + 2 * states + el * 3 * 4 if backward else 0)


def reference64(p: Problem, channels: int):
    """float64 sequential loop of cell.step over the first ``channels`` channels."""
    import copy
    n = min(channels, p.N)
    cell = copy.deepcopy(p.cell).double()
    idx = torch.cat([torch.arange(g * p.N, g * p.N + n) for g in range(3)]).cuda()
    with torch.no_grad():
        cell.a.data = cell.a.data[:, :n].clone()
        cell.bias.data = cell.bias.data[:, :n].clone()
        if p.kind == "lstm":
            cell.peephole.data = cell.peephole.data[:, :n].clone()
        cell.hidden_size = n
        cell.state_size = p.width * n
        x = p.pre[0][:, :, idx].double()
        h = p.h0[:, : p.width * n].double()
        out = torch.empty(p.B, p.T, p.width * n, dtype=torch.float64, device="cuda")
        for t in range(p.T):
            h = cell.step(x[:, t], h)
            out[:, t] = h
    return out, p.width * n


def maxerr(x, ref, cols):
    return (x[..., :cols].double() - ref).abs().max().item()


def tune(results, narrow=False):
    """Launch-plan sweep. ``narrow``: the long-T, narrow shapes only, over channel block,
    segment length and warm-up with the shipped steps per block, timed by graph replay."""
    rows = []
    if narrow:
        plans = [dict(block_n=bn, num_warps=1) for bn in (32, 64, 128)]
        segs = [(seg, warm) for seg in (128, 256, 512) for warm in (16, 32)]
        timer = lambda fn: graph_median_ms(lambda: fn(0))  # noqa: E731
    else:
        plans = [dict(block_n=128, num_warps=1, steps_per_block=8),
                 dict(block_n=128, num_warps=1, steps_per_block=16),
                 dict(block_n=64, num_warps=1, steps_per_block=16)]
        segs = ((None, 32), (None, 64), (128, 32), (512, 64))
        timer = bench
    for kind in ("gru", "lstm"):
        for (B, T, N) in SHAPES:
            if narrow and B * N > 8192:
                continue
            p = Problem(kind, B, T, N)
            floor = p.floor_bytes() / results["bandwidth"] * 1e3
            for plan in plans:
                name = f"{plan['block_n']}/{plan['num_warps']}/{plan.get('steps_per_block', '-')}"
                for seg, warm in segs:
                    ms = timer(lambda i: p.newton(i, seg_len=seg, warmup=warm, **plan))
                    rows.append((kind, f"{B}x{T}x{N}", name, seg, warm, ms, ms / floor))
                if not narrow:
                    ms = bench(lambda i: p.sequential(i, **plan))
                    rows.append((kind, f"{B}x{T}x{N}", name, "seq", "-", ms, ms / floor))
            del p
            torch.cuda.empty_cache()
    results["narrow" if narrow else "tune"] = rows
    print("\n| cell | shape | block_n/warps/K | seg_len | warmup | ms | x floor |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.3f} | {r[6]:.2f} |")
    sys.stdout.flush()


def main_tables(results):
    bw = results["bandwidth"]
    rows = []
    for kind in ("gru", "lstm"):
        for (B, T, N) in SHAPES:
            p = Problem(kind, B, T, N)
            ref, cols = reference64(p, 64)
            H = p.newton()
            Hs = p.sequential()
            err_newton = maxerr(H, ref, cols)
            err_seq = maxerr(Hs, ref, cols)
            try:
                Ht = p.torch_newton()
                err_torch = maxerr(Ht, ref, cols)
                del Ht
                t_torch = bench(lambda i: p.torch_newton(i))
            except torch.OutOfMemoryError:
                err_torch = t_torch = float("nan")
            torch.cuda.empty_cache()
            gH = torch.randn_like(H)
            t_newton = bench(lambda i: p.newton(i))
            t_graph = graph_median_ms(lambda: p.newton(0))
            t_seq = bench(lambda i: p.sequential(i))
            t_fb = bench(lambda i: p.backward(p.newton(i), gH, i))
            floor = p.floor_bytes() / bw * 1e3
            floor_fb = p.floor_bytes(backward=True) / bw * 1e3
            rows.append(dict(cell=kind, shape=(B, T, N), newton=t_newton, graph=t_graph, seq=t_seq,
                             torch=t_torch, floor=floor, fwd_bwd=t_fb, floor_fb=floor_fb,
                             err_newton=err_newton, err_seq=err_seq, err_torch=err_torch,
                             seq_vs_newton=(H - Hs).abs().max().item()))
            print(rows[-1])
            sys.stdout.flush()
            del p, H, Hs, gH, ref
            torch.cuda.empty_cache()
    results["main"] = rows


def baselines(results):
    """cuDNN GRU/LSTM and the naive per-step loop at 8x4096x1024 (fp32)."""
    B, T, N = 8, 4096, 1024
    out = {}
    x = torch.randn(B, T, N, device="cuda")
    for name, cls in (("gru", torch.nn.GRU), ("lstm", torch.nn.LSTM)):
        rnn = cls(N, N, batch_first=True, device="cuda")
        with torch.no_grad():
            out[f"cudnn_{name}_fwd"] = bench(lambda i: rnn(x))
        xg = x.clone().requires_grad_()

        def fb(i):
            y, _ = rnn(xg)
            y.sum().backward()
        out[f"cudnn_{name}_fwd_bwd"] = bench(fb)
        del rnn
    for kind in ("gru", "lstm"):
        p = Problem(kind, B, T, N)
        pre = p.pre[0].clone().requires_grad_()

        def loop():
            h = p.h0
            hs = []
            for t in range(T):
                h = p.cell.step(pre[:, t], h)
                hs.append(h)
            return torch.stack(hs, 1)
        with torch.no_grad():
            loop()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            loop()
            torch.cuda.synchronize()
            out[f"loop_{kind}_fwd"] = (time.perf_counter() - t0) * 1e3
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loop().sum().backward()
        torch.cuda.synchronize()
        out[f"loop_{kind}_fwd_bwd"] = (time.perf_counter() - t0) * 1e3
        del p, pre
        torch.cuda.empty_cache()
    results["baselines"] = out
    print(out)


def sweep(results):
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    rows = []
    for kind in ("gru", "lstm"):
        for T in SWEEP_T:
            B, N = 8, 1024
            copies = max(1, min(4, math.ceil(4 * l2 / (B * T * 3 * N * 4))))
            p = Problem(kind, B, T, N, copies=copies)
            t_newton = bench(lambda i: p.newton(i), rotate=copies)
            t_seq = bench(lambda i: p.sequential(i), rotate=copies)
            t_torch = bench(lambda i: p.torch_newton(i), rotate=copies) if T <= 16384 else float("nan")
            rows.append(dict(cell=kind, T=T, newton=t_newton, seq=t_seq, torch=t_torch,
                             floor=p.floor_bytes() / results["bandwidth"] * 1e3))
            print(rows[-1])
            del p
            torch.cuda.empty_cache()
    results["sweep"] = rows


def layers(results):
    """ParaGRU / ParaLSTM layers (projection + solve) at 8x4096x1024, fp32 and bf16 autocast,
    next to the layer's matrix products alone and the fused solve's memory floor."""
    from pararnn.layers import ParaGRU, ParaLSTM
    B, T, D = 8, 4096, 1024
    x = torch.randn(B, T, D, device="cuda", requires_grad=True)
    rows = []
    matmul = {}
    for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for heads in (1, 8):  # the projection's GEMMs: forward, and (dx, dW) backward
            a = torch.randn(heads, B * T, D // heads, device="cuda", dtype=dtype)
            w = torch.randn(heads, D // heads, 3 * D // heads, device="cuda", dtype=dtype)
            g = torch.randn(heads, B * T, 3 * D // heads, device="cuda", dtype=dtype)
            t_f = bench(lambda i: torch.bmm(a, w))
            t_b = bench(lambda i: (torch.bmm(g, w.transpose(1, 2)), torch.bmm(a.transpose(1, 2), g)))
            matmul[(prec, heads)] = (t_f, t_f + t_b)
            del a, w, g
    bw = results["bandwidth"]
    for cls in (ParaGRU, ParaLSTM):
        width = 1 if cls is ParaGRU else 2
        for heads in (1, 8):
            for backend in ("auto", "torch"):
                layer = cls(D, D, num_heads=heads, recurrent_clip=0.5, backend=backend,
                            device="cuda")
                for prec in ("fp32", "bf16"):
                    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=prec == "bf16")
                    grad = torch.randn(B, T, D, device="cuda")

                    def fwd(i):
                        with torch.no_grad(), amp:
                            layer(x)

                    def fwd_bwd(i):
                        with amp:
                            y, _ = layer(x)
                        y.backward(grad.to(y.dtype))
                    t_f = bench(fwd)
                    t_fb = bench(fwd_bwd)
                    # the fused solve's floor: pre read + states written; backward: pre, H,
                    # dL/dH read and grad_pre written (pre and grad_pre in the input dtype)
                    el = B * T * D
                    pre_b = 2 if prec == "bf16" else 4
                    floor_f = el * (3 * pre_b + 4 * width) / bw * 1e3
                    floor_fb = floor_f + el * (6 * pre_b + 8 * width) / bw * 1e3
                    mm_f, mm_fb = matmul[(prec, heads)]
                    rows.append(dict(layer=cls.__name__, heads=heads, backend=backend,
                                     solver=layer.last_solve.backend, prec=prec, fwd=t_f,
                                     fwd_bwd=t_fb, matmul_fwd=mm_f, matmul_fwd_bwd=mm_fb,
                                     floor_fwd=floor_f, floor_fwd_bwd=floor_fb))
                    print(rows[-1])
                    sys.stdout.flush()
    results["layers"] = rows


def print_tables(results):
    bw = results["bandwidth"]
    print(f"\ndevice: {results['device']}; torch {results['torch']}, triton {results['triton']}; "
          f"copy bandwidth {bw / 1e12:.2f} TB/s (read+write); {results['date']}")
    print("\n| cell | B×T×N | fused fwd | x floor | fused fwd, GPU time (graph) | x floor "
          "| fused sequential fwd | torch Newton fwd | floor | fused fwd+bwd | fwd+bwd floor |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results.get("main", []):
        shape = tuple(r["shape"])
        print(f"| {r['cell']} | {'×'.join(map(str, shape))} | {r['newton']:.3f} ms "
              f"| {r['newton'] / r['floor']:.2f} | {r['graph']:.3f} ms | {r['graph'] / r['floor']:.2f} "
              f"| {r['seq']:.3f} ms | {r['torch']:.2f} ms "
              f"| {r['floor']:.3f} ms | {r['fwd_bwd']:.3f} ms | {r['floor_fb']:.3f} ms |")
    print("\n| cell | B×T×N | max abs err fused Newton | fused sequential | torch Newton (3 it) "
          "| fused Newton vs fused sequential |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results.get("main", []):
        print(f"| {r['cell']} | {'×'.join(map(str, r['shape']))} | {r['err_newton']:.1e} "
              f"| {r['err_seq']:.1e} | {r['err_torch']:.1e} | {r['seq_vs_newton']:.1e} |")
    if "baselines" in results:
        print("\n| 8×4096×1024 fp32 | forward | forward+backward |")
        print("|---|---:|---:|")
        b = results["baselines"]
        for name, key in (("cuDNN nn.GRU (incl. input matmul)", "cudnn_gru"),
                          ("cuDNN nn.LSTM (incl. input matmul)", "cudnn_lstm"),
                          ("naive per-step loop, ParaGRU cell", "loop_gru"),
                          ("naive per-step loop, ParaLSTM cell", "loop_lstm")):
            print(f"| {name} | {b[key + '_fwd']:.2f} ms | {b[key + '_fwd_bwd']:.2f} ms |")
    if "layers" in results:
        print("\n| layer 8×4096×1024 | heads | backend (ran) | precision | forward | forward+backward "
              "| matmuls fwd / fwd+bwd | solve floor fwd / fwd+bwd | fwd+bwd / (matmuls + floor) |")
        print("|---|---:|---|---|---:|---:|---:|---:|---:|")
        for r in results["layers"]:
            bound = r["matmul_fwd_bwd"] + r["floor_fwd_bwd"]
            print(f"| {r['layer']} | {r['heads']} | {r['backend']} ({r['solver']}) | {r['prec']} "
                  f"| {r['fwd']:.2f} ms | {r['fwd_bwd']:.2f} ms | {r['matmul_fwd']:.2f} / "
                  f"{r['matmul_fwd_bwd']:.2f} ms | {r['floor_fwd']:.2f} / {r['floor_fwd_bwd']:.2f} ms "
                  f"| {r['fwd_bwd'] / bound:.2f} |")
    if "sweep" in results:
        print("\n| cell | T (B=8, N=1024) | fused Newton | fused sequential | torch Newton | floor |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in results["sweep"]:
            print(f"| {r['cell']} | {r['T']} | {r['newton']:.3f} | {r['seq']:.3f} "
                  f"| {r['torch']:.2f} | {r['floor']:.3f} |")


def plot(path_json, path_png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    results = json.load(open(path_json))
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, style in (("gru", "-"), ("lstm", "--")):
        rows = [r for r in results["sweep"] if r["cell"] == kind]
        T = [r["T"] for r in rows]
        ax.plot(T, [r["seq"] / r["newton"] for r in rows], "o" + style,
                label=f"{kind}: fused sequential / fused Newton")
        pts = [(r["T"], r["torch"] / r["newton"]) for r in rows if r["torch"] == r["torch"]]
        ax.plot([t for t, _ in pts], [s for _, s in pts], "s" + style,
                label=f"{kind}: torch Newton / fused Newton")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T (B=8, N=1024, fp32)")
    ax.set_ylabel("speedup of the fused Newton forward")
    ax.set_title(f"{results['device']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)


SECTIONS = {"main": main_tables, "baselines": baselines, "sweep": sweep, "layers": layers,
            "tune": tune, "narrow": lambda results: tune(results, narrow=True)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="main,baselines,sweep,layers",
                    help=f"comma-separated, run in this order: {', '.join(SECTIONS)}")
    ap.add_argument("--json", default="gpu_fused.json")
    ap.add_argument("--plot", metavar="JSON", help="only draw the speedup-vs-T PNG from a JSON file")
    ap.add_argument("--png", default="speedup_vs_T.png", help="where --plot draws")
    args = ap.parse_args()
    if args.plot:
        plot(args.plot, args.png)
        return
    names = args.sections.split(",")
    unknown = set(names) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    import triton
    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                   triton=triton.__version__, date=str(datetime.date.today()),
                   command=" ".join(sys.argv))
    results["bandwidth"] = copy_bandwidth()
    print(f"copy bandwidth {results['bandwidth'] / 1e12:.3f} TB/s")
    for name in names:
        SECTIONS[name](results)
        json.dump(results, open(args.json, "w"), indent=1, default=str)
    print_tables(results)


if __name__ == "__main__":
    main()
