"""The fused kernels' launch plan on CUDA, without a GPU (the SM count is given): segments
by the chains each SM gets, and the tile of :data:`_fused_common.CUDA_TILES` for that many
chains."""

import pytest
import torch

from pararnn.kernels import _fused_common

SMS = 132  # an H200's


@pytest.fixture
def cuda_plan(monkeypatch, request):
    monkeypatch.setattr(_fused_common, "multiprocessors", lambda device: SMS)
    _fused_common._cached_plan.cache_clear()
    request.addfinalizer(_fused_common._cached_plan.cache_clear)  # no plans of a fake GPU

    def plan(kernel, batch, steps, channels, **kw):
        kw = {"seg_len": None, "warmup": None, "block_n": None, "num_warps": None, **kw}
        return _fused_common.make_plan(kernel, batch, steps, channels, torch.device("cuda"), **kw)
    return plan


@pytest.mark.parametrize("kernel", sorted(_fused_common.CUDA_TILES))
def test_tile_table_is_ordered_with_a_catch_all(kernel):
    entries = _fused_common.CUDA_TILES[kernel]
    limits = [limit for limit, _ in entries]
    assert limits[-1] is None and None not in limits[:-1]
    assert limits[:-1] == sorted(limits[:-1])
    assert _fused_common.cuda_tile(kernel, 0) == entries[0][1]
    assert _fused_common.cuda_tile(kernel, 1e9) == entries[-1][1]
    for limit, tile in entries[:-1]:
        assert _fused_common.cuda_tile(kernel, limit) == tile  # a limit is inclusive


def test_no_catch_all_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(_fused_common.CUDA_TILES, "gru_fwd", ((10, (64, 1, 4, 3)),))
    with pytest.raises(ValueError, match="no catch-all"):
        _fused_common.cuda_tile("gru_fwd", 11)


@pytest.mark.parametrize("kernel, shape, segments", [
    ("gru_bwd", (32, 512, 1024), 1),    # 248 chains per SM: one walk, the fewer-chains tile
    ("gru_bwd", (4, 4096, 1024), 16),   # 496
    ("gru_bwd", (8, 4096, 1024), 16),   # 993: the many-chains tile
    ("lstm_bwd", (32, 512, 1024), 1),
    ("lstm_bwd", (4, 4096, 1024), 16),
    ("gru_fwd", (64, 2048, 2048), 1),   # one walk of many chains
])
def test_plan_takes_the_tile_for_its_chains_per_sm(cuda_plan, kernel, shape, segments):
    plan = cuda_plan(kernel, *shape)
    batch, _, channels = shape
    assert plan.segments == segments
    want = _fused_common.cuda_tile(kernel, batch * channels * segments / SMS)
    assert (plan.block_n, plan.num_warps, plan.steps_per_block, plan.stages) == want


def test_plan_tiles_differ_across_the_thresholds(cuda_plan):
    few = cuda_plan("gru_bwd", 32, 512, 1024)
    many = cuda_plan("gru_bwd", 8, 4096, 1024)
    assert (few.block_n, few.steps_per_block) == (64, 4)
    assert (many.block_n, many.steps_per_block) == (128, 4)


def test_explicit_tile_arguments_win(cuda_plan):
    plan = cuda_plan("gru_fwd", 32, 512, 1024, block_n=256, num_warps=2, steps_per_block=2,
                     stages=2)
    assert (plan.block_n, plan.num_warps, plan.steps_per_block, plan.stages) == (256, 2, 2, 2)
    plan = cuda_plan("gru_fwd", 32, 512, 1024, block_n=256)  # warps follow the block
    assert plan.num_warps == 2


@pytest.mark.parametrize("option, value, message", [
    ("block_n", 48, "block_n must be a power of two"),
    ("warmup", -1, "warmup must be >= 0"),
    ("steps_per_block", 32, "steps_per_block must be a power of two <= 16"),
    ("steps_per_block", 3, "steps_per_block must be a power of two <= 16"),
    ("stages", 0, "stages must be >= 1"),
])
def test_bad_plan_options_are_clear_errors(cuda_plan, option, value, message):
    with pytest.raises(ValueError, match=message):
        cuda_plan("gru_fwd", 32, 512, 1024, **{option: value})


def test_the_interpreter_plan_does_not_pipeline():
    # Triton's interpreter runs loads where they are written: a depth would only be noise
    plan = _fused_common.make_plan("gru_fwd", 2, 64, 32, torch.device("cpu"), seg_len=None,
                                   warmup=None, block_n=None, num_warps=None)
    assert plan.stages == 1


@pytest.mark.parametrize("steps, seg_len, warmup, whole", [
    (4096, 256, 32, True),     # the LM's T = 4096 plan
    (512, 512, 0, True),       # one walk
    (4098, 256, 32, False),    # the last block is partial
    (4096, 250, 32, False),    # segments end inside blocks
    (4096, 256, 30, False),    # warm-ups start inside blocks
])
def test_whole_blocks_needs_steps_segments_and_warm_up_in_whole_blocks(steps, seg_len, warmup,
                                                                        whole):
    plan = _fused_common.make_plan("gru_bwd", 2, steps, 32, torch.device("cpu"), seg_len=seg_len,
                                   warmup=warmup, block_n=None, num_warps=None, steps_per_block=4)
    assert plan.whole_blocks(steps) is whole
