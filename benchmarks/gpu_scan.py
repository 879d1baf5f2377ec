"""Triton affine-recurrence kernels vs the PyTorch reference scan vs the memory floor.

    PYTHONPATH=src python benchmarks/gpu_scan.py [--json OUT]   # markdown table (+ its rows)
    PYTHONPATH=src python benchmarks/gpu_scan.py --sweep        # launch configurations instead

The floor is the bytes the solve must move (read J and r once, write h once) over the
copy bandwidth measured in the same run (a 2 GiB device-to-device copy, bytes read +
written). Times are medians of ``triton.testing.do_bench``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import torch
import triton
from triton.testing import do_bench

from pararnn.kernels import scan as triton_scan
from pararnn.scan import solve_linear_recurrence
from pararnn.structure import DIAGONAL, block

STRUCTURES = {"diag": DIAGONAL, "block2": block(2), "block3": block(3)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# (structure, dtype, B, T, N)
CASES = [
    ("diag", "fp32", 8, 4096, 1024),
    ("block2", "fp32", 8, 4096, 1024),
    ("diag", "fp32", 64, 2048, 2048),
    ("block2", "fp32", 64, 2048, 2048),
    ("diag", "fp32", 1, 65536, 256),
    ("block2", "fp32", 1, 65536, 256),
    ("block3", "fp32", 8, 3000, 768),
    ("diag", "bf16", 8, 4096, 1024),
    ("block2", "bf16", 8, 4096, 1024),
    ("diag", "bf16", 1, 65536, 256),
]
# --sweep: structure -> (launch configurations (block_t, block_c, warps, stages),
#                        shapes (B, T, N) with the chunk counts to try at each)
SWEEP = {
    "block2": (
        [(16, 32, 4, 1), (8, 32, 4, 1), (16, 32, 1, 1), (32, 32, 1, 1), (16, 32, 1, 2),
         (16, 64, 2, 1), (8, 128, 4, 1), (16, 128, 4, 1), (8, 64, 2, 1)],
        [((8, 4096, 1024), (1, 2, 4, 8)), ((1, 65536, 256), (32, 64, 128, 256)),
         ((64, 2048, 2048), (1,))],
    ),
    "diag": (
        [(64, 32, 4, 2), (32, 32, 4, 2), (64, 32, 2, 2), (32, 128, 1, 2), (64, 128, 1, 2),
         (16, 128, 1, 2), (32, 256, 2, 2), (64, 16, 1, 2)],
        [((8, 4096, 1024), (1, 2, 4)), ((1, 65536, 256), (16, 32, 64, 128, 256)),
         ((64, 2048, 2048), (1,))],
    ),
    "block3": (
        [(16, 16, 4, 1), (8, 32, 4, 1), (16, 32, 1, 1), (8, 32, 1, 1), (16, 64, 2, 1),
         (8, 128, 4, 1)],
        [((8, 3000, 768), (1, 2, 4, 8)), ((1, 65536, 255), (64, 128))],
    ),
}


def copy_bandwidth() -> float:
    """Bytes read + written per second of a large device-to-device copy."""
    src = torch.randn(2**29, device="cuda")  # 2 GiB
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def make_inputs(name, dtype, batch, steps, width):
    structure = STRUCTURES[name]
    k = 1 if structure.kind == "diagonal" else structure.block_size
    shape = structure.jacobian_shape((batch, steps), width)
    jac = ((torch.rand(shape, device="cuda") * 2 - 1) * (0.9 / k)).to(dtype)
    rhs = torch.randn(batch, steps, width, device="cuda").to(dtype)
    return structure, k, jac, rhs


def bench(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def main_table(bandwidth: float) -> tuple[list[str], list[dict]]:
    """The markdown rows and the same numbers as records (times in ms; None: out of memory)."""
    records = []
    rows = [
        "| structure | dtype | B×T×N | chunks | Triton (ms) | PyTorch ref (ms) | floor (ms) | Triton / floor | ref / Triton | max rel err |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, dname, batch, steps, width in CASES:
        structure, k, jac, rhs = make_inputs(name, DTYPES[dname], batch, steps, width)
        out = triton_scan.linear_recurrence(jac, rhs, structure)
        ref = solve_linear_recurrence(jac.float(), rhs.float(), structure)
        err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
        chunks = triton_scan._pick_chunks(batch, steps, width // k, triton_scan._CONFIGS[k], rhs.device)
        t_kernel = bench(lambda: triton_scan.linear_recurrence(jac, rhs, structure))
        del out, ref
        try:
            t_ref = bench(lambda: solve_linear_recurrence(jac, rhs, structure))
            ref_cell = f"{t_ref:.3f}"
            ratio_cell = f"{t_ref / t_kernel:.1f}×"
        except torch.OutOfMemoryError:
            t_ref, ref_cell, ratio_cell = None, "OOM", "OOM"
        torch.cuda.empty_cache()
        nbytes = (jac.numel() + 2 * rhs.numel()) * rhs.element_size()
        floor = nbytes / bandwidth * 1e3
        rows.append(
            f"| {name} | {dname} | {batch}×{steps}×{width} | {chunks} | {t_kernel:.3f} | {ref_cell} "
            f"| {floor:.3f} | {t_kernel / floor:.2f} | {ratio_cell} | {err:.1e} |"
        )
        records.append(dict(structure=name, dtype=dname, batch=batch, steps=steps, width=width,
                            chunks=chunks, triton_ms=t_kernel, reference_ms=t_ref, floor_ms=floor,
                            max_rel_err=err))
        print(rows[-1], flush=True)
        del jac, rhs
        torch.cuda.empty_cache()
    return rows, records


def sweep(bandwidth: float) -> None:
    """Time launch configurations and chunk counts directly (fp32, forward)."""
    print("| structure | B×T×N | block_t | block_c | warps | stages | chunks | ms | × floor |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (configs, shapes) in SWEEP.items():
        for (batch, steps, width), chunk_counts in shapes:
            structure, k, jac, rhs = make_inputs(name, torch.float32, batch, steps, width)
            out = torch.empty_like(rhs)
            floor = (jac.numel() + 2 * rhs.numel()) * 4 / bandwidth * 1e3
            for bt, bc, warps, stages in configs:
                cfg = triton_scan._Config(bt, bc, warps, stages)
                for chunks in chunk_counts:
                    ms = do_bench(lambda: triton_scan._solve(jac, rhs, out, k, False, None, chunks, cfg),
                                  warmup=10, rep=40, return_mode="median")
                    print(f"| {name} | {batch}×{steps}×{width} | {bt} | {bc} | {warps} | {stages} "
                          f"| {chunks} | {ms:.3f} | {ms / floor:.2f} |", flush=True)
            del jac, rhs, out
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="time launch configurations and chunk counts instead")
    parser.add_argument("--json", help="also write the main table's rows to this JSON file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    bandwidth = copy_bandwidth()
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, "
          f"triton {triton.__version__}, {datetime.date.today()}")
    print(f"copy bandwidth (read + write): {bandwidth / 1e12:.2f} TB/s\n", flush=True)
    if args.sweep:
        sweep(bandwidth)
        return
    rows, records = main_table(bandwidth)
    print("\n" + "\n".join(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=props.name, sms=props.multi_processor_count, torch=torch.__version__,
                           triton=triton.__version__, date=datetime.datetime.now().isoformat(timespec="seconds"),
                           copy_bandwidth_bytes_per_s=bandwidth, rows=records), f, indent=1)


if __name__ == "__main__":
    main()
