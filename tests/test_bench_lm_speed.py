"""The LM speed benchmark's launch-plan variants (benchmarks/gpu_lm_speed.py) on the CPU:
which rows a variant list makes, that a tile override reaches the launch plan (whose cache
does not key on the tiles) and that restoring it brings the shipped plan back."""

import pytest
import torch

from benchmark_scripts import load_benchmark
from pararnn.kernels import _fused_common


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("gpu_lm_speed")


def test_variants_only_for_paraRNN_models(bench):
    assert bench.plan_variants("transformer", "128", "shipped") == [(None, {})]
    assert bench.plan_variants("paragru", "", "") == [(None, {})]
    assert bench.plan_variants("paralstm:tuned", "256,64", "") == [
        ("seg256", {"MIN_SEG_LEN": 256}), ("seg64", {"MIN_SEG_LEN": 64})]


def test_tile_sets_replace_named_kernels_only(bench):
    (label0, shipped), (label1, over) = bench.plan_variants(
        "paragru", "", "shipped;gru_fwd=32/1/4/3,gru_bwd=64/2/2/4")
    assert (label0, shipped) == ("shipped", {})
    assert label1 == "tiles:gru_fwd=32/1/4/3,gru_bwd=64/2/2/4"
    assert over["CUDA_TILES"] == {**_fused_common.CUDA_TILES,
                                  "gru_fwd": ((None, (32, 1, 4, 3)),),
                                  "gru_bwd": ((None, (64, 2, 2, 4)),)}
    with pytest.raises(SystemExit, match="unknown kernel"):
        bench.plan_variants("paragru", "", "gru_fwdd=32/1/4/3")
    for bad in ("gru_fwd=32/1/4", "gru_fwd=32/1/4/2/1", "gru_fwd=a/1/4/3", "gru_fwd"):
        with pytest.raises(SystemExit, match="BLOCK_N/WARPS/STEPS_PER_BLOCK/STAGES"):
            bench.plan_variants("paragru", "", bad)
    with pytest.raises(SystemExit, match="one tile per kernel in a set, got several for gru_fwd"):
        bench.plan_variants("paragru", "", "gru_fwd=32/1/4/3+64/1/4/3")


def test_tile_override_reaches_the_cached_plan(bench, monkeypatch, request):
    # a plan on a CUDA device object needs no GPU once the SM count is given
    monkeypatch.setattr(_fused_common, "multiprocessors", lambda device: 132)
    _fused_common._cached_plan.cache_clear()
    request.addfinalizer(_fused_common._cached_plan.cache_clear)  # no plans of a fake GPU

    def block_n():
        return _fused_common.make_plan("gru_fwd", 2, 16, 64, torch.device("cuda"), seg_len=None,
                                       warmup=None, block_n=None, num_warps=None,
                                       sequential=True).block_n
    shipped = block_n()
    assert shipped == _fused_common.cuda_tile("gru_fwd", 2 * 64 / 132)[0]
    (_, over), = bench.plan_variants("paragru", "", "gru_fwd=32/1/4/3")
    previous = bench.set_plan_constants(over)
    try:
        assert block_n() == 32
    finally:
        bench.set_plan_constants(previous)
    assert block_n() == shipped
