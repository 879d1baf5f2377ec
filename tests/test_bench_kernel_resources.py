"""The static register/spill report (benchmarks/kernel_resources.py) on the CPU: every
argument of the four fused kernels gets a type or a value (a kernel whose signature
changes must fail here, not on the GPU machine), and one tile compiles for sm_90 through
Triton's bundled ptxas and cuobjdump."""

import os

import pytest

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("kernel_resources")


@pytest.mark.parametrize("kernel", ["gru_fwd", "gru_bwd", "lstm_fwd", "lstm_bwd"])
@pytest.mark.parametrize("segmented", [False, True])
def test_every_kernel_argument_is_specialised(bench, kernel, segmented):
    fn, signature, consts = bench.kernel_spec(kernel, "bf16", segmented)
    assert list(signature) == fn.arg_names
    for name, kind in signature.items():
        assert kind != "constexpr" or name in consts or name in ("BN", "K", "VEC"), name
    assert consts["SEGMENTED"] is segmented
    assert all(signature[name] == ("*fp32" if segmented else "constexpr")
               for name in bench.BOUNDARY)


def test_one_tile_compiles_for_sm90(bench):
    if not os.path.exists(bench.CUOBJDUMP):
        pytest.skip("this Triton ships no cuobjdump")
    row = bench.resources("gru_fwd", (32, 1, 4), "bf16", False, 90)
    assert row["channels_per_thread"] == 1
    assert 16 <= row["registers"] <= 255 and row["stack_bytes"] >= 0


@pytest.mark.parametrize("kernel", ["gru_fwd", "gru_bwd", "lstm_fwd", "lstm_bwd"])
def test_bf16_walks_cost_what_fp32_walks_cost(bench, kernel):
    """bf16 pre-activations must not change the step loop's work per thread: left to
    itself Triton loads them 8 to a thread, splits the K steps of a tile over threads and
    replicates every reduced row, which doubled the instructions of a bf16 walk (GRU
    forward: 130 against 62 per channel-step; ``channel_offsets`` fixes the layout)."""
    if not os.path.exists(bench.NVDISASM):
        pytest.skip("this Triton ships no nvdisasm")
    from pararnn.kernels._fused_common import CUDA_TILES
    tile = CUDA_TILES[kernel]
    bf16, fp32 = (bench.resources(kernel, tile, dtype, False, 90)["instructions_per_channel_step"]
                  for dtype in ("bf16", "fp32"))
    assert bf16 <= 1.25 * fp32, (bf16, fp32)
