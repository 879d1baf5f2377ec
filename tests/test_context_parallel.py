"""Context parallelism: a sequence split along time over ranks equals the one-process solve.

The multi-process checks (gloo on CPU, float64, 1e-10) run in one 4-process spawn,
tests/context_parallel_checks.py: K = 2, 3, 4 (odd chunk lengths), h0, resets, ParaGRU,
ParaLSTM (2x2 blocks), a dense user cell, early boundary stopping, the paper-block LM
(conv halo) and a 2 x 2 (data x context) mesh under DDP.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pararnn import ParaGRU
from pararnn.distributed import ContextParallel, context_parallel_solve, enable_context_parallel, time_chunk
from pararnn.distributed.affine import affine_scan, compose_chunk
from pararnn.models import build_model, preset
from pararnn.structure import DENSE, DIAGONAL, block

ROOT = Path(__file__).resolve().parents[1]


def test_multi_process_solves_equal_the_single_process_solve(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "context_parallel_checks.py"),
                          str(tmp_path / "init")], env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]


@pytest.mark.parametrize("structure", [DIAGONAL, block(2), DENSE], ids=["diagonal", "block2", "dense"])
def test_scan_and_chunk_product_match_the_step_loop(structure):
    torch.manual_seed(0)
    batch, steps, n = 2, 7, 4
    coeff = torch.randn(*structure.jacobian_shape((batch, steps), n), dtype=torch.float64)
    rhs = torch.randn(batch, steps, n, dtype=torch.float64)
    dense = structure.to_dense(coeff)
    state, states = torch.zeros(batch, n, dtype=torch.float64), []
    product = torch.eye(n, dtype=torch.float64).expand(batch, n, n)
    for t in range(steps):
        state = (dense[:, t] @ state.unsqueeze(-1)).squeeze(-1) + rhs[:, t]
        states.append(state)
        product = dense[:, t] @ product
    torch.testing.assert_close(affine_scan(structure, coeff, rhs), torch.stack(states, 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(structure.to_dense(compose_chunk(structure, coeff)), product, rtol=0, atol=1e-12)
    state, backwards = torch.zeros(batch, n, dtype=torch.float64), []
    for t in reversed(range(steps)):
        state = (dense[:, t] @ state.unsqueeze(-1)).squeeze(-1) + rhs[:, t]
        backwards.append(state)
    torch.testing.assert_close(affine_scan(structure, coeff, rhs, reverse=True),
                               torch.stack(backwards[::-1], 1), rtol=0, atol=1e-12)


def test_time_chunks_cover_the_sequence_in_order():
    x = torch.arange(11).reshape(1, 11)
    pieces = [time_chunk(x, r, 4) for r in range(4)]
    assert [p.shape[1] for p in pieces] == [3, 3, 3, 2]
    assert torch.equal(torch.cat(pieces, 1), x)
    with pytest.raises(ValueError, match="piece 4 of 4"):
        time_chunk(x, 4, 4)


def test_clear_errors():
    layer = ParaGRU(4, 5)
    with pytest.raises(TypeError, match="layer must be"):
        ContextParallel(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="x must be this rank's chunk"):
        context_parallel_solve(layer.cell, torch.randn(3, 15))
    with pytest.raises(ValueError, match="boundary_tol"):
        context_parallel_solve(layer.cell, torch.randn(1, 3, 15), boundary_tol=0)
    with pytest.raises(ValueError, match="initialised torch.distributed"):
        context_parallel_solve(layer.cell, torch.randn(1, 3, 15))
    with pytest.raises(ValueError, match="paragru and paralstm models only"):
        enable_context_parallel(build_model(preset("transformer", "nano", vocab_size=64)))
