"""The parallel affine-recurrence solver against a plain loop, for every structure."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pararnn.scan import solve_linear_recurrence, solve_linear_recurrence_sequential
from pararnn.scan.pytorch import solve_adjoint_loop
from pararnn.structure import DENSE, DIAGONAL, JacobianStructure, block

STRUCTURES = {"diagonal": DIAGONAL, "block2": block(2), "block3": block(3), "dense": DENSE}


def random_recurrence(structure, batch, steps, state, generator, scale=0.9):
    shape = structure.jacobian_shape((batch, steps), state)
    jac = torch.randn(shape, dtype=torch.float64, generator=generator)
    if structure.kind != "diagonal":
        jac = jac / jac.shape[-1] ** 0.5  # keep the products bounded
    rhs = torch.randn(batch, steps, state, dtype=torch.float64, generator=generator)
    return jac * scale, rhs


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(sorted(STRUCTURES)),
    batch=st.integers(1, 3),
    steps=st.integers(1, 70),
    blocks=st.integers(1, 4),
    reverse=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_scan_matches_loop(kind, batch, steps, blocks, reverse, seed):
    structure = STRUCTURES[kind]
    state = blocks * structure.block_size if kind.startswith("block") else blocks + 1
    gen = torch.Generator().manual_seed(seed)
    jac, rhs = random_recurrence(structure, batch, steps, state, gen)
    parallel = solve_linear_recurrence(jac, rhs, structure, reverse=reverse)
    loop = solve_linear_recurrence_sequential(jac, rhs, structure, reverse=reverse)
    torch.testing.assert_close(parallel, loop, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("steps", [1000, 4097])
@pytest.mark.parametrize("kind", ["diagonal", "block2"])
def test_scan_long_sequences(kind, steps):
    structure = STRUCTURES[kind]
    gen = torch.Generator().manual_seed(1)
    jac, rhs = random_recurrence(structure, 2, steps, 4, gen)
    torch.testing.assert_close(
        solve_linear_recurrence(jac, rhs, structure),
        solve_linear_recurrence_sequential(jac, rhs, structure),
        rtol=1e-10, atol=1e-10,
    )


def test_first_jacobian_is_ignored():
    """h_{-1} = 0: the Jacobian of step 0 must not matter (reverse: that of step T-1)."""
    gen = torch.Generator().manual_seed(2)
    jac, rhs = random_recurrence(DIAGONAL, 1, 9, 3, gen)
    changed = jac.clone()
    changed[:, 0] = 123.0
    changed[:, -1] = -7.0
    torch.testing.assert_close(solve_linear_recurrence(jac[:, :-1], rhs[:, :-1], DIAGONAL),
                               solve_linear_recurrence(changed[:, :-1], rhs[:, :-1], DIAGONAL))
    torch.testing.assert_close(solve_linear_recurrence(jac[:, 1:], rhs[:, 1:], DIAGONAL, reverse=True),
                               solve_linear_recurrence(changed[:, 1:], rhs[:, 1:], DIAGONAL, reverse=True))


@pytest.mark.parametrize("kind", sorted(STRUCTURES))
def test_adjoint_loop_matches_the_reversed_scan_whole_and_in_pieces(kind):
    """``λ_t = r_t + J_{t+1}^T λ_{t+1}`` by the loop equals the reversed scan with the
    transposed, shifted Jacobians; cut into pieces of several steps chained by their
    carries (``J_start^T λ_start`` of each piece), it gives the same adjoints."""
    structure = STRUCTURES[kind]
    state = 6
    gen = torch.Generator().manual_seed(4)
    jac, rhs = random_recurrence(structure, 2, 11, state, gen)
    shifted = structure.transpose(torch.cat((jac[:, 1:], jac[:, :1]), dim=1))
    want = solve_linear_recurrence_sequential(shifted, rhs, structure, reverse=True)
    torch.testing.assert_close(solve_adjoint_loop(jac, rhs, structure), want,
                               rtol=1e-12, atol=1e-12)
    pieces, carry = [], None
    for end, start in ((11, 7), (7, 3), (3, 0)):  # 4 + 4 + 3 steps, from the last
        adjoint, carry = solve_adjoint_loop(jac[:, start:end], rhs[:, start:end], structure,
                                            carry, with_carry=True)
        pieces.insert(0, adjoint)
    torch.testing.assert_close(torch.cat(pieces, dim=1), want, rtol=1e-12, atol=1e-12)
    # the last carry is J_0^T λ_0
    torch.testing.assert_close(carry, structure.apply(structure.transpose(jac[:, 0]), want[:, 0]),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(STRUCTURES))
def test_structure_algebra_matches_dense_matrices(kind):
    structure = STRUCTURES[kind]
    state = 6
    gen = torch.Generator().manual_seed(3)
    a, v = random_recurrence(structure, 2, 3, state, gen)
    b, _ = random_recurrence(structure, 2, 3, state, gen)
    dense_a, dense_b = structure.to_dense(a), structure.to_dense(b)
    torch.testing.assert_close(structure.to_dense(structure.compose(a, b)), dense_a @ dense_b)
    torch.testing.assert_close(structure.apply(a, v), (dense_a @ v.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(structure.to_dense(structure.transpose(a)), dense_a.transpose(-1, -2))


def test_structure_rejects_bad_definitions():
    with pytest.raises(ValueError, match="jacobian must be one of"):
        JacobianStructure("sparse")
    with pytest.raises(ValueError, match="block_size"):
        JacobianStructure("block", 0)
    with pytest.raises(ValueError, match="only meaningful"):
        JacobianStructure("diagonal", 2)
    with pytest.raises(ValueError, match="not a multiple"):
        block(3).check_state_size(7)
