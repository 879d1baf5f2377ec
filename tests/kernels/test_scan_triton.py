"""Triton affine-recurrence kernels against the PyTorch reference scan in float64."""

import pytest
import torch

pytest.importorskip("triton")

from pararnn.kernels import interpreter_enabled  # noqa: E402
from pararnn.kernels import scan as triton_scan  # noqa: E402
from pararnn.scan import solve_linear_recurrence  # noqa: E402
from pararnn.structure import DENSE, DIAGONAL, block  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

if not CUDA and not interpreter_enabled():
    pytest.skip(
        "no CUDA device and TRITON_INTERPRET is not 1",
        allow_module_level=True,
    )

STRUCTURES = {"diag": DIAGONAL, "block2": block(2), "block3": block(3)}
# an odd and an even state size per structure (block2: odd and even block counts)
WIDTHS = {"diag": (7, 8), "block2": (6, 8), "block3": (9, 12)}
# (B, T, which width); 17 steps: the block scans' tiles of 8 steps twice and a masked one
# (carried from tile to tile), the diagonal scan's 64-step tile masked
SHAPES = [(1, 1, 0), (3, 2, 1), (1, 7, 1), (2, 17, 0)]


def _k(structure):
    return 1 if structure.kind == "diagonal" else structure.block_size


def _inputs(structure, batch, steps, width, dtype=torch.float32, device=DEVICE, scale=0.9):
    """Random contracting Jacobians (entries in ±scale/k) and standard-normal rhs."""
    shape = structure.jacobian_shape((batch, steps), width)
    jac = (torch.rand(shape, device=device) * 2 - 1) * (scale / _k(structure))
    rhs = torch.randn(batch, steps, width, device=device)
    return jac.to(dtype), rhs.to(dtype)


def _reference(jac, rhs, structure, reverse, initial_state=None):
    jac, rhs = jac.double(), rhs.double().clone()
    if initial_state is not None:
        first = -1 if reverse else 0
        rhs[:, first] += structure.apply(jac[:, first], initial_state.double())
    return solve_linear_recurrence(jac, rhs, structure, reverse=reverse)


def _rel_err(out, ref):
    assert torch.isfinite(out).all()
    return ((out.double() - ref).norm() / ref.norm()).item()


# ------------------------------------------------------------------ supports / errors
def test_supports():
    for dtype in (torch.float32, torch.bfloat16):
        assert triton_scan.supports(DIAGONAL, dtype)
        assert triton_scan.supports(block(2), dtype)
        assert triton_scan.supports(block(3), dtype)
        assert not triton_scan.supports(block(4), dtype)
        assert not triton_scan.supports(DENSE, dtype)
    for dtype in (torch.float64, torch.float16, torch.int32):
        assert not triton_scan.supports(DIAGONAL, dtype)
        assert not triton_scan.supports(block(2), dtype)


def test_rejects_float64_and_bad_shapes():
    jac, rhs = _inputs(DIAGONAL, 2, 5, 4)
    with pytest.raises(ValueError, match="float64"):
        triton_scan.linear_recurrence(jac.double(), rhs.double(), DIAGONAL)
    with pytest.raises(ValueError, match="jac must have shape"):
        triton_scan.linear_recurrence(jac[:, :4], rhs, DIAGONAL)
    with pytest.raises(ValueError, match="block"):
        triton_scan.linear_recurrence(jac, rhs, DENSE)
    with pytest.raises(ValueError, match="initial_state"):
        triton_scan.linear_recurrence(jac, rhs, DIAGONAL, initial_state=rhs[:, 0, :3])


# ------------------------------------------------------------------ small sizes
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}T{s[1]}")
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_matches_reference(name, reverse, shape, dtype):
    structure = STRUCTURES[name]
    batch, steps, which = shape
    width = WIDTHS[name][which]
    jac, rhs = _inputs(structure, batch, steps, width, dtype)
    out = triton_scan.linear_recurrence(jac, rhs, structure, reverse=reverse)
    assert out.shape == rhs.shape and out.dtype == dtype
    # bf16: the inputs are exact in float64; only the bf16 output rounding (2^-9) remains
    tol = 1e-5 if dtype == torch.float32 else 4e-3
    assert _rel_err(out, _reference(jac, rhs, structure, reverse)) < tol


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_non_contiguous_and_mixed_dtypes(name):
    structure = STRUCTURES[name]
    width = WIDTHS[name][1]
    jac, rhs = _inputs(structure, 7, 3, width)
    jac, rhs = jac.transpose(0, 1), rhs.transpose(0, 1)  # (B=3, T=7) views
    assert not jac.is_contiguous() and not rhs.is_contiguous()
    for reverse in (False, True):
        out = triton_scan.linear_recurrence(jac, rhs, structure, reverse=reverse)
        assert _rel_err(out, _reference(jac, rhs, structure, reverse)) < 1e-5
    jac16 = jac.to(torch.bfloat16)
    out = triton_scan.linear_recurrence(jac16, rhs, structure)
    assert out.dtype == torch.float32
    assert _rel_err(out, _reference(jac16, rhs, structure, False)) < 1e-5


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_initial_state_and_unused_first_jacobian(name, reverse):
    structure = STRUCTURES[name]
    width = WIDTHS[name][0]
    jac, rhs = _inputs(structure, 2, 9, width)
    h0 = torch.randn(2, width, device=DEVICE)
    out = triton_scan.linear_recurrence(jac, rhs, structure, reverse=reverse, initial_state=h0)
    assert _rel_err(out, _reference(jac, rhs, structure, reverse, h0)) < 1e-5
    # Without an initial state the first step's Jacobian is never used, not even as 0 * J.
    first = -1 if reverse else 0
    poisoned = jac.clone()
    poisoned[:, first] = float("nan")
    out = triton_scan.linear_recurrence(poisoned, rhs, structure, reverse=reverse)
    assert _rel_err(out, _reference(jac, rhs, structure, reverse)) < 1e-5


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0=0", "h0"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_two_level_chunks(name, reverse, with_h0):
    """The chunked path (summaries, scan of summaries, fix-up), forced at a small size."""
    structure = STRUCTURES[name]
    k = _k(structure)
    width = WIDTHS[name][0]
    steps = 23  # chunks of 8 steps (tiles of 4): 3 chunks, the last one partial
    jac, rhs = _inputs(structure, 2, steps, width)
    h0 = torch.randn(2, width, device=DEVICE) if with_h0 else None
    out = torch.full_like(rhs, float("nan"))
    cfg = triton_scan._Config(block_t=4, block_c=4, num_warps=1)
    triton_scan._solve(jac, rhs, out, k, reverse, h0, 3, cfg)
    assert _rel_err(out, _reference(jac, rhs, structure, reverse, h0)) < 1e-5


def test_pick_chunks():
    cfg = triton_scan._Config(block_t=64, block_c=32, num_warps=4, single_pass_per_sm=2,
                              chunked_per_sm=8)
    cpu = torch.device("cpu")  # counts as one multiprocessor
    # enough programs from batch x channels: one pass
    assert triton_scan._pick_chunks(1, 4096, 64, cfg, cpu) == 1
    # one program: split time into 8 chunks, or fewer so that each has >= 4 tiles
    assert triton_scan._pick_chunks(1, 4096, 32, cfg, cpu) == 8
    assert triton_scan._pick_chunks(1, 1024, 32, cfg, cpu) == 4
    assert triton_scan._pick_chunks(1, 200, 32, cfg, cpu) == 1


# ------------------------------------------------------------------ GPU, real sizes
GPU_CASES = [
    ("diag", 8, 4096, 1024),
    ("block2", 8, 4096, 1024),
    ("block3", 8, 3000, 768),
    ("diag", 2, 3000, 768),
    ("block2", 1, 65536, 256),  # long and narrow: the chunked path
    ("diag", 1, 65536, 256),
    ("block3", 3, 4099, 9),
]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}x{c[3]}")
def test_gpu_real_sizes(case, reverse, dtype):
    name, batch, steps, width = case
    structure = STRUCTURES[name]
    jac, rhs = _inputs(structure, batch, steps, width, dtype)
    h0 = torch.randn(batch, width, device=DEVICE)
    out = triton_scan.linear_recurrence(jac, rhs, structure, reverse=reverse)
    tol = 1e-5 if dtype == torch.float32 else 4e-3
    assert _rel_err(out, _reference(jac, rhs, structure, reverse)) < tol
    out = triton_scan.linear_recurrence(jac, rhs, structure, reverse=reverse, initial_state=h0)
    assert _rel_err(out, _reference(jac, rhs, structure, reverse, h0)) < tol


@gpu
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gpu_offsets_past_int32(reverse):
    """J with more than 2^31 elements: the far end must be addressed correctly.

    With |J| <= 0.5 the state forgets its past within ~100 steps, so the last 1000
    states are checked against a reference solved on the last 1200 steps alone.
    """
    batch, width = 2, 1024
    steps = 2**31 // (batch * width) + 77
    try:
        jac, rhs = _inputs(DIAGONAL, batch, steps, width, scale=0.5)
        out = triton_scan.linear_recurrence(jac, rhs, DIAGONAL, reverse=reverse)
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory for a 2^31-element Jacobian")
    tail = slice(steps - 1200, steps) if not reverse else slice(0, 1200)
    ref = _reference(jac[:, tail], rhs[:, tail], DIAGONAL, reverse)
    keep = slice(200, 1200) if not reverse else slice(0, 1000)
    assert _rel_err(out[:, tail][:, keep], ref[:, keep]) < 1e-5
