"""Context parallelism: a sequence split along time over ranks equals the one-process solve.

The multi-process checks (gloo on CPU, float64, 1e-10) run in one 4-process spawn,
tests/context_parallel_checks.py: K = 2, 3, 4 (odd chunk lengths), h0, resets, ParaGRU,
ParaLSTM (2x2 blocks), a dense user cell, early boundary stopping, the paper-block LM
(conv halo), a hybrid LM (attention over gathered keys, uneven chunks) and a 2 x 2
(data x context) mesh under DDP and FSDP2.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pararnn import ParaGRU
from pararnn.distributed import ContextParallel, context_parallel_solve, enable_context_parallel, time_chunk
from pararnn.distributed.affine import compose_chunk
from pararnn.scan import solve_linear_recurrence
from pararnn.models import build_model, preset
from pararnn.structure import DENSE, DIAGONAL, block
from source_corpus import write_source_corpus

ROOT = Path(__file__).resolve().parents[1]


def test_multi_process_solves_equal_the_single_process_solve(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "context_parallel_checks.py"),
                          str(tmp_path / "init")], env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]


def test_fused_kernels_in_the_interpreter_two_ranks_match_one_process(tmp_path):
    """The per-chunk solve through the fused Triton kernels (Triton's CPU interpreter)."""
    pytest.importorskip("triton")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "context_parallel_checks.py"),
                          str(tmp_path / "init"), "--interpret"], env=env, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_two_ranks_match_one_gpu(tmp_path):
    """float32 with the fused kernels: NCCL on 2 GPUs, or 2 ranks sharing 1 GPU over gloo."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "context_parallel_checks.py"),
                          str(tmp_path / "init"), "--cuda"], env=env, capture_output=True, text=True, timeout=600)
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
    torch.testing.assert_close(solve_linear_recurrence(coeff, rhs, structure), torch.stack(states, 1),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(structure.to_dense(compose_chunk(structure, coeff)), product, rtol=0, atol=1e-12)
    state, backwards = torch.zeros(batch, n, dtype=torch.float64), []
    for t in reversed(range(steps)):
        state = (dense[:, t] @ state.unsqueeze(-1)).squeeze(-1) + rhs[:, t]
        backwards.append(state)
    torch.testing.assert_close(solve_linear_recurrence(coeff, rhs, structure, reverse=True),
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
    with pytest.raises(TypeError, match="expected x of dtype torch.float32"):
        context_parallel_solve(layer.cell, torch.randn(1, 3, 15, dtype=torch.float64))
    with pytest.raises(ValueError, match="initialised torch.distributed"):
        context_parallel_solve(layer.cell, torch.randn(1, 3, 15))
    for model in ("transformer", "mamba2"):
        with pytest.raises(ValueError, match="paragru and paralstm models only"):
            enable_context_parallel(build_model(preset(model, "nano", vocab_size=64)))


def test_train_with_context_parallel_matches_one_process(tmp_path):
    """`pararnn train --context-parallel 2` under torchrun (2 processes: 1 data x 2 context,
    gloo) trains the paper-block ParaGRU LM like one process on whole sequences."""
    from safetensors.torch import load_file

    from pararnn.train import TrainConfig, open_checkpoint, train
    from pararnn.train.metrics import read_metrics

    corpus = write_source_corpus(tmp_path / "corpus", files=20)
    options = dict(model="paragru", size="nano", block="paper", data=str(corpus), seq_len=32, batch_size=4,
                   max_steps=3, eval_every=3, ckpt_every=3, eval_tokens=256, log_every=1, lr=3e-3)
    train(TrainConfig(out=str(tmp_path / "single"), progress=False, device="cpu", **options))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "pararnn", "train", "--context-parallel", "2", "--out", str(tmp_path / "split"),
           "--no-progress", "--device", "cpu"]
    cmd += [a for key, value in options.items() for a in (f"--{key.replace('_', '-')}", str(value))]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "context parallel: 1 data x 2 context ranks" in run.stdout

    def curve(name):
        return read_metrics(tmp_path / name / "metrics.jsonl")

    single, split = curve("single"), curve("split")
    assert [r["kind"] for r in single] == [r["kind"] for r in split]
    for a, b in zip(single, split):
        for key in ("loss", "val_loss", "tokens"):
            if key in a:
                # the chunks' inner Newton solves (3 iterations) round differently from the whole
                assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)
    wa, wb = (load_file(str(open_checkpoint(tmp_path / n).path / "model.safetensors")) for n in ("single", "split"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
