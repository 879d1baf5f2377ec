"""Our ParaGRU / ParaLSTM layers next to peers', timed by one harness on one GPU.

Peers: pararnn-torch (PyPI ``pararnn-torch``, an independent implementation with fused
Triton Newton kernels) and Apple's released code (ml-pararnn, the paper's CUDA kernels, its
``parallel_FUSED`` mode; built on the GPU machine from a source copy). Each installs a
top-level package also called ``pararnn``, so each library is timed in its own process and
the JSON files are joined afterwards:

    pip install --no-deps --target /tmp/peer pararnn_torch-*.whl
    PYTHONPATH=src       python benchmarks/gpu_peers.py --impl ours          --json OUT/peers_ours.json
    PYTHONPATH=/tmp/peer python benchmarks/gpu_peers.py --impl pararnn-torch --json OUT/peers_pararnn_torch.json
    python benchmarks/gpu_peers.py --table OUT/peers_ours.json OUT/peers_pararnn_torch.json

Apple's copy is built by ``benchmarks/gpu_peers.sh``, which also runs every library here
in one call: its ``setup.py`` builds the CUDA extension next to the package, which loads it
from there (on Python >= 3.11 one dataclass default has to become a factory first, or the
package does not import); then ``PYTHONPATH=/tmp/apple python benchmarks/gpu_peers.py
--impl apple --heads 8 --json OUT/peers_apple_8head.json``.

Layers: input = hidden = N, ``--heads`` heads of the block-diagonal input projection (1 by
default: pararnn-torch's diagonal cells have a dense ``d -> 3d`` input projection and no
multi-head one, which ours with ``num_heads=1`` matches; Apple's cells and ours take any
head count), recurrent clip 0.5 (ours and pararnn-torch; Apple's cells have none), each
library's default Newton configuration and initialisation, the parallel solve forced
(pararnn-torch's ``ParaRNN`` otherwise runs the step loop in ``eval()``; Apple's cells run
``parallel_FUSED``). Forward = no gradients; forward+backward = backward of the outputs' sum into
the input and every parameter. fp32, or bf16 autocast. TF32 stays off (PyTorch's default),
recorded in the JSON. Median of 20 calls after 5 warm-up calls, each between CUDA events
(``cuda_timing.median_event_ms``). Before timing, each layer's parallel output is compared
with the same library's sequential recurrence on one batch row (``max_abs_diff``), so a
fast but wrong solve shows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform

import torch

from cuda_timing import median_event_ms

SHAPES = [(8, 4096, 1024), (16, 1024, 512), (32, 512, 512), (1, 65536, 256)]
CELLS = ("gru", "lstm")
CHECK_MAX_STEPS = 4096  # the sequential reference of the 65536-step shape takes too long


def build_ours(cell: str, n: int, heads: int):
    import pararnn
    cls = {"gru": pararnn.ParaGRU, "lstm": pararnn.ParaLSTM}[cell]
    torch.manual_seed(0)
    parallel = cls(n, n, num_heads=heads, recurrent_clip=0.5, mode="parallel", device="cuda")
    sequential = cls(n, n, num_heads=heads, recurrent_clip=0.5, mode="sequential", device="cuda")
    sequential.load_state_dict(parallel.state_dict())
    return (lambda x: parallel(x)[0]), (lambda x: sequential(x)[0]), parallel


def build_pararnn_torch(cell: str, n: int, heads: int):
    import pararnn
    if heads != 1:
        raise ValueError("pararnn-torch's diagonal cells have no multi-head input projection")
    cls = {"gru": pararnn.ParaGRU, "lstm": pararnn.ParaLSTM}[cell]
    torch.manual_seed(0)
    template = cls(n, n, max_recurrent_norm=0.5, device="cuda")
    parallel = pararnn.ParaRNN(template, solver="newton")
    sequential = pararnn.ParaRNN(template, solver="sequential")  # the same cell module
    return parallel, sequential, parallel


def build_apple(cell: str, n: int, heads: int):
    """Apple's ``GRUDiagMH`` / ``LSTMCIFGDiagMH`` in ``parallel_FUSED`` mode; the reference is
    the same module switched to its ``sequential`` mode for the call."""
    from pararnn.rnn_cell.rnn_cell_application import RNNCellApplicationMode
    if cell == "gru":
        from pararnn.rnn_cell.gru_diag_mh import GRUDiagMH as Model, GRUDiagMHConfig as Config
    else:
        from pararnn.rnn_cell.lstm_cifg_diag_mh import LSTMCIFGDiagMH as Model, LSTMCIFGDiagMHConfig as Config
    torch.manual_seed(0)
    model = Model(Config(state_dim=n, input_dim=n, num_heads=heads, device=torch.device("cuda"),
                         mode=RNNCellApplicationMode.PARALLEL_FUSED.value))

    def sequential(x):
        model.mode = RNNCellApplicationMode.SEQUENTIAL
        try:
            return model(x)
        finally:
            model.mode = RNNCellApplicationMode.PARALLEL_FUSED
    return model, sequential, model


BUILDERS = {"ours": build_ours, "pararnn-torch": build_pararnn_torch, "apple": build_apple}


def measure(impl: str, cell: str, shape, precision: str, heads: int) -> dict:
    batch, steps, n = shape
    forward, reference, module = BUILDERS[impl](cell, n, heads)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")
    row = {"cell": cell, "B": batch, "T": steps, "N": n, "heads": heads, "precision": precision}
    x = torch.randn(batch, steps, n, device="cuda")
    if steps <= CHECK_MAX_STEPS:
        with torch.no_grad(), amp:
            got = forward(x[:1]).float()
            want = reference(x[:1]).float()
        row["max_abs_diff"] = (got - want).abs().max().item()
    xg = x.clone().requires_grad_()

    def fwd():
        with torch.no_grad(), amp:
            forward(x)

    def fwd_bwd():
        with amp:
            out = forward(xg)
        out.float().sum().backward()

    row["fwd_ms"] = median_event_ms(fwd)
    row["fwd_bwd_ms"] = median_event_ms(fwd_bwd)
    row["parameters"] = sum(p.numel() for p in module.parameters())
    return row


def run(impl: str, out: str, heads: int) -> None:
    import pararnn
    if impl == "pararnn-torch":
        from importlib.metadata import version as dist_version
        version = dist_version("pararnn-torch")
    else:
        version = getattr(pararnn, "__version__", "source tree")
    rows = []
    for cell in CELLS:
        for shape in SHAPES:
            for precision in ("fp32", "bf16"):
                try:
                    row = measure(impl, cell, shape, precision, heads)
                except Exception as exc:  # a peer that fails a shape is reported, not fatal
                    row = {"cell": cell, "B": shape[0], "T": shape[1], "N": shape[2], "heads": heads,
                           "precision": precision, "error": f"{type(exc).__name__}: {exc}"[:300]}
                rows.append(row)
                print(json.dumps(row), flush=True)
                torch.cuda.empty_cache()
    meta = {"impl": impl, "version": version, "heads": heads, "device": torch.cuda.get_device_name(),
            "torch": torch.__version__, "python": platform.python_version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "date": datetime.date.today().isoformat()}
    with open(out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


def table(paths: list[str]) -> None:
    """Each peer's rows next to ours at the same head count (a JSON of ours per count)."""
    runs = [json.load(open(p)) for p in paths]
    ours = {r["meta"].get("heads", 1): r for r in runs if r["meta"]["impl"] == "ours"}
    peers = [r for r in runs if r["meta"]["impl"] != "ours"]
    key = lambda r: (r["cell"], r["B"], r["T"], r["N"], r["precision"])
    for peer in peers:
        heads = peer["meta"].get("heads", 1)
        if heads not in ours:
            print(f"{peer['meta']['impl']}: no JSON of ours at {heads} head(s)\n")
            continue
        theirs = {key(r): r for r in peer["rows"]}
        print(f"ours vs {peer['meta']['impl']} {peer['meta']['version']} ({heads} head(s), "
              f"{peer['meta']['device']}, {peer['meta']['date']}), ms:\n")
        print("| cell | B×T×N | precision | fwd ours / theirs | speed-up | fwd+bwd ours / theirs | speed-up |")
        print("|---|---|---|---:|---:|---:|---:|")
        for row in ours[heads]["rows"]:
            other = theirs.get(key(row), {"error": "not measured"})
            if "error" in row or "error" in other:
                print(f"| {row['cell']} | {row['B']}×{row['T']}×{row['N']} | {row['precision']} | "
                      f"{row.get('error') or other.get('error')} | | | |")
                continue
            print(f"| {row['cell']} | {row['B']}×{row['T']}×{row['N']} | {row['precision']} "
                  f"| {row['fwd_ms']:.3f} / {other['fwd_ms']:.3f} | {other['fwd_ms'] / row['fwd_ms']:.2f}× "
                  f"| {row['fwd_bwd_ms']:.3f} / {other['fwd_bwd_ms']:.3f} "
                  f"| {other['fwd_bwd_ms'] / row['fwd_bwd_ms']:.2f}× |")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=list(BUILDERS))
    parser.add_argument("--json", help="where --impl writes its rows")
    parser.add_argument("--heads", type=int, default=1,
                        help="heads of the block-diagonal input projection (ours and apple)")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print the comparison table")
    args = parser.parse_args()
    if args.table:
        table(args.table)
    elif args.impl and args.json:
        run(args.impl, args.json, args.heads)
    else:
        parser.error("give --impl and --json, or --table")


if __name__ == "__main__":
    main()
