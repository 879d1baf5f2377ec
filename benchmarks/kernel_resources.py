"""Registers, spills and instructions per step of the fused ParaGRU / ParaLSTM kernels per
tile, without a GPU.

    python benchmarks/kernel_resources.py [--arch 90] [--dtype bf16] [--json OUT.json]

Compiles each kernel (GRU/LSTM, forward/backward) for an NVIDIA architecture (default
sm_90, the H100/H200) with Triton's own ahead-of-time path, for every tile of
``gpu_profile.TILES`` (channels per program, warps, steps per block, load-pipeline
stages), as the one-walk plan and the segmented plan launch it (``SEGMENTED``; with
``--plans correction`` the segmented plan's correction rounds, ``CORRECT``), and reads
the registers per thread and the stack bytes (spills) of the cubin with the
``cuobjdump`` that ships with Triton,
and counts the SASS instructions of the step loop (its ``nvdisasm``): the loop's length
divided by the channel-steps a thread does per iteration (steps per block x channels per
thread) is the instructions one channel-step costs. Where a plan leaves few warps per SM
the walk is bound by issuing them, so fewer is faster there.
The arguments are specialised as a layer's launch at the LM's shapes would be: a bias,
the recurrent clip, no initial state, no resets, the layer's output written as well
(ParaLSTM's ``h`` alone, ParaGRU's copy of the states, in pre's dtype) and its gradient
read, pointers 16-byte aligned and sizes divisible by 16, walks in whole step blocks
(``ALIGNED``); float arguments fp32 as a direct launch passes them
(``--float-scalars fp64``: as torch.compile's launcher does). Rows also count the
double-precision instructions (none expected).

``--norm``: the gated norm's two kernels (``pararnn.kernels.gated_norm``) instead, at the
rows the language models' states give them (512 to 4096 channels), as ``_tile`` launches
them on CUDA, bf16 ``h``, gate and output, float32 weight (``--float-scalars`` sets ``eps``).

A thread has at most 255 registers; past that the compiler spills to the stack (local
memory), which the sequential walk then reads and writes every step. Registers also bound
the warps an SM holds (65,536 registers per SM). The numbers are the Triton of the machine
that compiles them: the GPU machine's Triton may allocate differently, so they guide what
``gpu_profile.py --sweep`` times there rather than replace it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile

# Triton >= 3.9 warns unless this is set; 1 is the default the GPU machine's Triton compiles with
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from gpu_profile import TILES  # noqa: E402
from pararnn.kernels import gated_norm, paragru, paralstm  # noqa: E402
from pararnn.kernels._fused_common import channels_per_thread  # noqa: E402

NVIDIA_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
CUOBJDUMP = os.path.join(NVIDIA_BIN, "cuobjdump")
NVDISASM = os.path.join(NVIDIA_BIN, "nvdisasm")
_SASS_LINE = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*)")
_LABEL = re.compile(r"\s*\.(L_x_\d+):")
_JUMP = re.compile(r"\bBRA\b.*`\(\.(L_x_\d+)\)")


_FP64_OP = re.compile(r"\b(?:DADD|DMUL|DFMA|DSETP|DMNMX)\b")


def loop_instructions(sass: str) -> int:
    """Instructions of the largest loop in ``sass`` (``nvdisasm -c`` output): the span from
    a label to the last branch back to it. The fused kernels' step loop is their largest."""
    labels, instructions, pending = {}, [], []
    for line in sass.splitlines():
        label = _LABEL.match(line)
        if label:
            pending.append(label.group(1))
            continue
        match = _SASS_LINE.match(line)
        if match:
            address = int(match.group(1), 16)
            for name in pending:
                labels[name] = address
            pending = []
            instructions.append((address, match.group(2)))
    longest = 0
    for address, text in instructions:
        jump = _JUMP.search(text)
        if jump and labels.get(jump.group(1), address + 1) <= address:
            start = labels[jump.group(1)]
            longest = max(longest, sum(start <= a <= address for a, _ in instructions))
    return longest
BOUNDARY = ("E", "A", "S", "X")  # the segment-boundary buffers: None in the one-walk plan
TILE_CONSTANTS = ("BN", "K", "VEC", "STAGES", "ALIGNED")  # set by resources()


def kernel_spec(kernel: str, pre_dtype: str, segmented: bool, float_scalars: str = "fp32",
                correct: bool = False):
    """(Triton function, argument types, constexpr values) of ``kernel`` as the fused op
    launches it in a layer: with a bias, no h0, no resets, no verification walk. ``float_scalars``: the
    type of the float arguments (``tol``, ``clip``): fp32 from a direct launch, fp64 from
    inductor's generated launcher."""
    cell, direction = kernel.split("_")
    module = paragru if cell == "gru" else paralstm
    fn = getattr(module, f"_{cell}_{direction}_kernel")
    types = {"PRE": f"*{pre_dtype}", "AW": "*fp32", "PW": "*fp32", "BIAS": "*fp32",
             "T": "i32", "N": "i32", "NH": "i32", "NB": "i32", "L": "i32", "W": "i32", "P": "i32",
             "tol": float_scalars, "clip": float_scalars}
    if direction == "fwd":
        types["HOUT"] = "*fp32"
        consts = {"FELL": None, "VERIFY": False}
    else:
        types.update(HS="*fp32", GH="*fp32", GPRE=f"*{pre_dtype}", GA="*fp32", GH0="*fp32")
        consts = {"GROWS": 6}
    consts.update(H0=None, RST=None, HAS_BIAS=True, HAS_H0=False, HAS_RST=False, HAS_CLIP=True,
                  SEGMENTED=segmented, CORRECT=correct)
    # as a layer launches them: its output (ParaLSTM's h alone, ParaGRU's copy of the
    # states) written in pre's dtype as well, and that output's gradient read
    if direction == "fwd":
        types["HID"] = f"*{pre_dtype}"
        consts["HAS_HID"] = True
    else:
        types["GH"] = f"*{pre_dtype}"
        if cell == "lstm":
            consts["GRAD_H_ONLY"] = True
    if segmented:
        types.update({name: "*fp32" for name in BOUNDARY})
    else:
        consts.update({name: None for name in BOUNDARY})
    signature = {name: types.get(name, "constexpr") for name in fn.arg_names}
    unknown = [n for n, t in signature.items() if t == "constexpr" and n not in consts
               and n not in TILE_CONSTANTS]
    if unknown:  # a kernel argument this script does not know how to specialise
        raise RuntimeError(f"{kernel}: no type for {unknown}")
    return fn, signature, consts


def resources(kernel: str, tile, pre_dtype: str, segmented: bool, arch: int,
              float_scalars: str = "fp32", correct: bool = False) -> dict:
    block_n, num_warps, steps_per_block, stages = tile
    per_thread = channels_per_thread(block_n, num_warps)
    fn, signature, consts = kernel_spec(kernel, pre_dtype, segmented, float_scalars, correct)
    consts = {**consts, "BN": block_n, "K": steps_per_block, "VEC": per_thread, "STAGES": stages,
              "ALIGNED": True}
    aligned = BaseBackend.parse_attr("D")  # 16-byte aligned pointers, sizes divisible by 16
    attrs = {(i,): aligned for i, name in enumerate(fn.arg_names)
             if signature[name] not in ("constexpr", "fp32", "fp64")
             and name not in ("NB", "L", "W", "P")}
    compiled = triton.compile(ASTSource(fn, signature, consts, attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps})
    regs, stack = cubin_resources(compiled.asm["cubin"])
    sass = cubin_tool(NVDISASM, ["-c"], compiled.asm["cubin"])
    loop = loop_instructions(sass)
    return {"kernel": kernel, "block_n": block_n, "num_warps": num_warps,
            "steps_per_block": steps_per_block, "stages": stages,
            "channels_per_thread": per_thread, "segmented": segmented, "correct": correct,
            "registers": regs,
            "stack_bytes": stack, "shared_bytes": compiled.metadata.shared,
            "async_copies": compiled.asm["ptx"].count("cp.async."),
            "loop_instructions": loop,
            # double-precision arithmetic anywhere (a float argument left fp64 would add some)
            "fp64_instructions": len(_FP64_OP.findall(sass)),
            "instructions_per_channel_step": loop / (steps_per_block * per_thread)}


NORM_WIDTHS = (512, 1024, 1536, 2048, 4096)


def norm_resources(width: int, arch: int, float_scalars: str) -> list[dict]:
    """Registers, spills and shared memory of the gated norm's forward and backward kernels
    for rows of ``width`` channels, compiled as they launch on CUDA."""
    import triton.language as tl

    block_r, block_n, warps = gated_norm._tile(width, gated_norm.CUDA_TILE_ELEMENTS, cuda=True)
    types = {"H": "*bf16", "G": "*bf16", "Y": "*bf16", "DY": "*bf16", "DH": "*bf16", "DG": "*bf16",
             "W": "*fp32", "PART": "*fp32", "eps": float_scalars}
    rows = []
    for name, fn in (("norm_fwd", gated_norm._gated_norm_fwd_kernel),
                     ("norm_bwd", gated_norm._gated_norm_bwd_kernel)):
        signature = {n: types.get(n, "constexpr" if n in ("ACC", "BR", "BN") else "i32")
                     for n in fn.arg_names}
        aligned = BaseBackend.parse_attr("D")
        attrs = {(i,): aligned for i, n in enumerate(fn.arg_names) if signature[n].startswith("*")}
        compiled = triton.compile(ASTSource(fn, signature, {"ACC": tl.float32, "BR": block_r,
                                                            "BN": block_n}, attrs),
                                  target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
        regs, stack = cubin_resources(compiled.asm["cubin"])
        sass = cubin_tool(NVDISASM, ["-c"], compiled.asm["cubin"])
        rows.append({"kernel": name, "width": width, "block_rows": block_r, "block_width": block_n,
                     "num_warps": warps, "elements_per_thread": block_r * block_n // (32 * warps),
                     "registers": regs, "stack_bytes": stack,
                     "shared_bytes": compiled.metadata.shared,
                     "fp64_instructions": len(_FP64_OP.findall(sass))})
    return rows


def cubin_tool(tool: str, options: list[str], cubin: bytes) -> str:
    """The output of ``tool`` (cuobjdump, nvdisasm) with ``options`` on ``cubin``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([tool, *options, path], capture_output=True, text=True,
                              check=True).stdout


def cubin_resources(cubin: bytes) -> tuple[int, int]:
    """``(registers per thread, stack bytes)`` of a cubin, by ``cuobjdump -res-usage``."""
    text = cubin_tool(CUOBJDUMP, ["-res-usage"], cubin)
    match = re.search(r"REG:(\d+) STACK:(\d+)", text)
    if match is None:
        raise RuntimeError(f"no resource line in cuobjdump's output:\n{text}")
    return int(match.group(1)), int(match.group(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: sm_90)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                        help="the pre-activations' dtype (the LM's: bf16)")
    parser.add_argument("--shipped", action="store_true",
                        help="only the shipped tiles of each kernel (_fused_common.CUDA_TILES)")
    parser.add_argument("--plans", choices=("both", "one-walk", "segmented", "correction"),
                        default="both",
                        help="the one-walk plan, the segmented one or both (each a compile); "
                             "correction: the segmented plan's correction launches (CORRECT)")
    parser.add_argument("--float-scalars", choices=("fp32", "fp64"), default="fp32",
                        help="type of the float arguments (tol, clip): fp32 as a direct launch "
                             "passes them, fp64 as torch.compile's generated launcher does")
    parser.add_argument("--norm", action="store_true",
                        help="the gated norm's kernels at the LM widths instead")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    plans = {"both": ((False, False), (True, False)), "one-walk": ((False, False),),
             "segmented": ((True, False),), "correction": ((True, True),)}[args.plans]
    if os.environ.get("TRITON_INTERPRET") == "1":  # the kernels would be interpreted functions
        sys.exit("kernel_resources.py compiles the kernels: unset TRITON_INTERPRET")
    if args.norm:
        norm_table(args)
        return
    from pararnn.kernels._fused_common import CUDA_TILES
    rows = []
    print("| kernel | tile (channels/warps/steps/stages) | channels per thread | plan | registers "
          "| spill bytes | shared bytes | loop instructions | per channel-step |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for kernel, tiles in TILES.items():
        shipped_tiles = [tile for _, tile in CUDA_TILES[kernel]]
        for tile in shipped_tiles if args.shipped else tiles:
            for segmented, correct in plans:
                row = resources(kernel, tile, args.dtype, segmented, args.arch,
                                args.float_scalars, correct)
                rows.append(row)
                shipped = " (shipped)" if tuple(tile) in shipped_tiles else ""
                plan = "correction" if correct else "segmented" if segmented else "one walk"
                print(f"| {kernel} | {'/'.join(map(str, tile))}{shipped} | {row['channels_per_thread']} "
                      f"| {plan} | {row['registers']} "
                      f"| {row['stack_bytes']} | {row['shared_bytes']} | {row['loop_instructions']} "
                      f"| {row['instructions_per_channel_step']:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "kernel_resources", "arch": args.arch, "dtype": args.dtype,
                       "float_scalars": args.float_scalars,
                       "triton": triton.__version__,
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "rows": rows}, f, indent=1)



def norm_table(args) -> None:
    rows = []
    print("| kernel | width | rows x padded width | warps | elements per thread | registers "
          "| spill bytes | shared bytes | fp64 instructions |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for width in NORM_WIDTHS:
        for row in norm_resources(width, args.arch, args.float_scalars):
            rows.append(row)
            print(f"| {row['kernel']} | {width} | {row['block_rows']} x {row['block_width']} "
                  f"| {row['num_warps']} | {row['elements_per_thread']} | {row['registers']} "
                  f"| {row['stack_bytes']} | {row['shared_bytes']} | {row['fp64_instructions']} |",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "kernel_resources --norm", "arch": args.arch,
                       "float_scalars": args.float_scalars, "triton": triton.__version__,
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
