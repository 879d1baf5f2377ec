"""The static register/spill/instruction report (benchmarks/kernel_resources.py) on the
CPU: every argument of the four fused kernels gets a type or a value (a kernel whose
signature changes must fail here, not on the GPU machine), and the shipped tiles compile
for sm_90 through Triton's bundled ptxas, with bf16 walks costing what fp32 walks cost; the
gated norm's kernels compile without spills or double-precision arithmetic."""

import json
import os
import subprocess
import sys

import pytest

from benchmark_scripts import BENCHMARKS, load_benchmark
from pararnn.kernels._fused_common import CUDA_TILES
from triton_subprocess import compiling_env


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("kernel_resources")


@pytest.mark.parametrize("kernel", ["gru_fwd", "gru_bwd", "lstm_fwd", "lstm_bwd"])
@pytest.mark.parametrize("segmented", [False, True])
def test_every_kernel_argument_is_specialised(bench, kernel, segmented):
    fn, signature, consts = bench.kernel_spec(kernel, "bf16", segmented)
    assert list(signature) == fn.arg_names
    for name, kind in signature.items():
        assert kind != "constexpr" or name in consts or name in bench.TILE_CONSTANTS, name
    assert consts["SEGMENTED"] is segmented
    assert all(signature[name] == ("*fp32" if segmented else "constexpr")
               for name in bench.BOUNDARY)


def shipped_rows(tmp_path, dtype, plans, float_scalars="fp32"):
    """The script's rows for the shipped tiles, compiled in a process of its own: the
    kernel tests run the kernels interpreted (TRITON_INTERPRET=1), which cannot compile."""
    out = tmp_path / f"{dtype}-{float_scalars}.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "kernel_resources.py"), "--shipped",
                           "--dtype", dtype, "--plans", plans, "--float-scalars", float_scalars,
                           "--json", str(out)], env=compiling_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return {(r["kernel"], r["block_n"], r["num_warps"], r["steps_per_block"], r["stages"]): r
            for r in json.loads(out.read_text())["rows"]}


def test_shipped_tiles_compile_and_bf16_walks_cost_what_fp32_walks_cost(bench, tmp_path):
    """bf16 pre-activations must not change a walk's work per thread: left to itself
    Triton loads them 8 to a thread, splits the K steps of a tile over threads and
    replicates every reduced row, which doubled the instructions of a bf16 walk (GRU
    forward: 130 against 62 per channel-step; ``channel_offsets`` pins the layout)."""
    if not (os.path.exists(bench.CUOBJDUMP) and os.path.exists(bench.NVDISASM)):
        pytest.skip("this Triton ships no cuobjdump/nvdisasm")
    # the one-walk plans (the segmented ones add branches around the same walk)
    bf16, fp32 = (shipped_rows(tmp_path, dtype, "one-walk") for dtype in ("bf16", "fp32"))
    shipped = {(kernel, *tile) for kernel, entries in CUDA_TILES.items() for _, tile in entries}
    assert set(bf16) == set(fp32) == shipped
    for key, row in bf16.items():
        assert 16 <= row["registers"] <= 255 and row["stack_bytes"] >= 0, key
        assert row["loop_instructions"] > 0, key
        # a pipelined tile's loads are asynchronous copies (the pipeliner drops loads it
        # cannot pipeline, e.g. conditional ones, silently)
        assert (row["async_copies"] > 0) == (row["stages"] > 1), key
        # instruction issue bounds a walk where chains are few
        assert (row["instructions_per_channel_step"]
                <= 1.25 * fp32[key]["instructions_per_channel_step"]), key


def test_float_scalars_passed_as_fp64_keep_the_walks_fp32(bench, tmp_path):
    """torch.compile's generated launcher passes the float arguments (``tol``, ``clip``) as
    fp64 where a direct launch passes fp32; an fp64 ``clip`` once turned the walk's state
    fp64 mid-loop and inductor failed to compile every clipped layer (GPU machine only).
    The kernels compile so with no double-precision arithmetic left: the correction
    launches of the segmented plan, whose walk clamps with ``clip`` and whose start
    compares with ``tol`` (the verification walk's ``tol`` is cast the same way)."""
    if not (os.path.exists(bench.CUOBJDUMP) and os.path.exists(bench.NVDISASM)):
        pytest.skip("this Triton ships no cuobjdump/nvdisasm")
    rows = shipped_rows(tmp_path, "bf16", "correction", "fp64")
    shipped = {(kernel, *tile) for kernel, entries in CUDA_TILES.items() for _, tile in entries}
    assert set(rows) == shipped
    for key, row in rows.items():
        assert row["correct"] and row["fp64_instructions"] == 0, key


def test_gated_norm_kernels_keep_an_fp64_eps_out_of_their_math(bench, tmp_path):
    """The gated norm's ``eps`` arrives as an fp64 scalar from torch.compile's launcher; the
    kernels cast it before the row sums' add, so no double-precision arithmetic is left,
    and they compile without spills at every width the LMs give them (compiled in a
    process of its own, as ``shipped_rows``)."""
    if not (os.path.exists(bench.CUOBJDUMP) and os.path.exists(bench.NVDISASM)):
        pytest.skip("this Triton ships no cuobjdump/nvdisasm")
    out = tmp_path / "norm.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "kernel_resources.py"), "--norm",
                           "--float-scalars", "fp64", "--json", str(out)], env=compiling_env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["kernel"], r["width"]) for r in rows} == {
        (kernel, width) for kernel in ("norm_fwd", "norm_bwd") for width in bench.NORM_WIDTHS}
    for row in rows:
        assert row["fp64_instructions"] == 0 and row["stack_bytes"] == 0, row
