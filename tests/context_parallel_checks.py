"""Exactness checks of context parallelism, run by tests/test_context_parallel.py.

``python tests/context_parallel_checks.py INIT_FILE`` starts 4 CPU processes (gloo);
with ``--cuda`` it runs a float32 check on CUDA (2 ranks, fused kernels) instead. For
K = 2, 3, 4 the first K of them form a context group and compare, in float64, a K-rank
solve with the single-process solve of the whole sequence: outputs, final state and the
gradients of x, h0 and every parameter (1e-10). Then the 4 processes form a 2 x 2
(data x context) mesh and compare a DDP- and an FSDP2-wrapped context-parallel LM step with the
single-process step on the concatenated batch. Any failed assertion fails the run.
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pararnn import RNN, Cell, NewtonConfig, ParaGRU, ParaLSTM
from pararnn.distributed import ContextParallel, enable_context_parallel, init_context_mesh, time_chunk
from pararnn.models import build_model, preset

WORLD = 4
TOL = 1e-10
EXACT = NewtonConfig(max_iters=40, tol=1e-13, on_failure="raise")


class DenseTanhCell(Cell):
    """A user cell with a dense Jacobian: ``h' = tanh(W h + x)``."""

    jacobian = "dense"

    def __init__(self, size: int) -> None:
        super().__init__()
        self.input_size = self.state_size = size
        self.weight = nn.Parameter(0.4 * torch.randn(size, size, dtype=torch.float64) / size ** 0.5)

    def step(self, x, h_prev):
        return torch.tanh(h_prev @ self.weight.T + x)


def close(name: str, got, want, tol: float = TOL) -> None:
    err = (got - want).abs().max().item()
    assert err <= tol, f"{name}: max-abs error {err:.3e} > {tol:.0e}"


def summed(t: torch.Tensor, group) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t, group=group)
    return t


def check_layer(name, make_layer, group, size, *, h0: bool, resets: bool, lstm=False,
                steps=11, batch=3, boundary_tol=None):
    """Single process vs this rank's chunk: outputs, final state, all gradients."""
    rank = dist.get_rank(group)
    torch.manual_seed(1)  # identical layer and data on every rank
    layer = make_layer()
    features = layer.cell.input_size if isinstance(layer, RNN) else layer.input_size
    hidden = layer.cell.state_size if isinstance(layer, RNN) else layer.hidden_size
    x = torch.randn(batch, steps, features, dtype=torch.float64)
    state = None
    if h0:
        pieces = [torch.randn(batch, hidden, dtype=torch.float64) for _ in range(2 if lstm else 1)]
        state = tuple(pieces) if lstm else pieces[0]
    cuts = None
    if resets:
        cuts = torch.rand(batch, steps) < 0.15
        cuts[0, 0] = True  # a reset at the very first step
        cuts[1, steps // 2] = True  # and inside the sequence (at or next to a chunk edge)
        cuts[2, steps // 2 + 1] = True
    out_weight = torch.randn(batch, steps, hidden, dtype=torch.float64)
    end_weight = torch.randn(batch, hidden, dtype=torch.float64)

    def loss_of(output, final, weight, with_end):
        h_n = final[0] if lstm else final
        return (output * weight).sum() + ((h_n * end_weight).sum() if with_end else 0.0)

    def leaves():
        xs = x.clone().requires_grad_()
        st = None if state is None else (tuple(s.clone().requires_grad_() for s in state) if lstm
                                         else state.clone().requires_grad_())
        return xs, st

    # the reference: the whole sequence in one process
    x_ref, state_ref = leaves()
    output, final = layer(x_ref, state_ref, resets=cuts)
    loss_of(output, final, out_weight, True).backward()
    want = {"x": x_ref.grad, **{n: p.grad.clone() for n, p in layer.named_parameters()}}
    if state is not None:
        want["h0"] = torch.cat([s.grad for s in state_ref], -1) if lstm else state_ref.grad
    layer.zero_grad()

    # the same on this rank's chunk
    x_all, state_cp = leaves()
    x_k = time_chunk(x_all, rank, dist.get_world_size(group))
    wrapped = ContextParallel(layer, group, boundary_tol=boundary_tol)
    out_k, final_k = wrapped(x_k, state_cp, resets=None if cuts is None else time_chunk(cuts, rank, dist.get_world_size(group)))
    # h_n's loss term is added on rank 0 only: the total loss is the sum over ranks
    loss_of(out_k, final_k, time_chunk(out_weight, rank, dist.get_world_size(group)), rank == 0).backward()

    tol = TOL if boundary_tol is None else 10 * boundary_tol
    K = dist.get_world_size(group)
    close(f"{name} output", out_k, time_chunk(output, rank, K), tol)
    for got, ref in zip(final_k if lstm else (final_k,), final if lstm else (final,)):
        close(f"{name} h_n", got, ref, tol)
    # x's gradient: the chunk's rows are this rank's; the rest stays zero
    close(f"{name} grad x", summed(x_all.grad, group), want["x"], tol)
    if state is not None:
        got = torch.cat([s.grad for s in state_cp], -1) if lstm else state_cp.grad
        close(f"{name} grad h0", summed(got, group), want["h0"], tol)
    for n, p in layer.named_parameters():
        close(f"{name} grad {n}", summed(p.grad, group), want[n], tol)
    info = wrapped.last_solve
    if boundary_tol is None:
        assert info.rounds == K, info
        # once its incoming state is exact a rank keeps its solve: at most rank + 1 solves
        assert info.chunk_solves <= rank + 1, info
    else:
        assert info.rounds < K or info.residual <= boundary_tol, info


def check_language_model(group, K, steps=12, attn_every=0):
    """The paper-block ParaGRU LM (causal conv halo) on chunks vs whole sequences; with
    ``attn_every``, a hybrid whose attention blocks gather the earlier chunks' keys.

    The loss is a fixed random weighting of the float64 logits (the model's own
    cross-entropy runs in float32, which would hide errors below 1e-7)."""
    rank = dist.get_rank(group)
    torch.manual_seed(2)
    model = build_model(preset("paragru", "nano", vocab_size=64, block="paper", attn_every=attn_every)).double()
    for block in model.blocks:
        if hasattr(block.mixer, "rnn"):
            block.mixer.rnn.newton = EXACT
    idx = torch.randint(0, 64, (2, steps))
    weight = torch.randn(2, steps, 64, dtype=torch.float64)
    logits = model(idx)
    (logits * weight).sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}

    split = enable_context_parallel(copy.deepcopy(model), group)
    split.zero_grad()
    logits_k = split(time_chunk(idx, rank, K))
    (logits_k * time_chunk(weight, rank, K)).sum().backward()
    close("LM logits", logits_k, time_chunk(logits, rank, K))
    assert [n for n, _ in split.named_parameters()] == list(want)  # names (checkpoints) unchanged
    for n, p in split.named_parameters():
        close(f"LM grad {n}", summed(p.grad, group), want[n])


def check_data_by_context_mesh():
    """2 x 2 mesh: DDP (then FSDP2) over all ranks x 2-way context; equals one process on
    both batches."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    mesh = init_context_mesh(2, "cpu")
    torch.manual_seed(3)
    model = build_model(preset("paralstm", "nano", vocab_size=64, block="paper")).double()
    for block in model.blocks:
        block.mixer.rnn.newton = EXACT
    idx = torch.randint(0, 64, (2 * mesh.data_world, 10))
    weight = torch.randn(2 * mesh.data_world, 10, 64, dtype=torch.float64)
    # DDP averages over its 4 ranks: scale the reference so that the mean matches it
    (model(idx) * weight).sum().div(WORLD).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}

    rows = slice(2 * mesh.data_rank, 2 * mesh.data_rank + 2)
    replica = enable_context_parallel(copy.deepcopy(model), mesh.group)
    replica.zero_grad()
    ddp = DistributedDataParallel(replica)
    (ddp(mesh.chunk(idx[rows])) * mesh.chunk(weight[rows])).sum().backward()
    for n, p in replica.named_parameters():
        close(f"mesh DDP grad {n}", p.grad, want[n])

    sharded = enable_context_parallel(copy.deepcopy(model), mesh.group)
    sharded.zero_grad()
    for block in sharded.blocks:
        fully_shard(block)
    fully_shard(sharded)
    (sharded(mesh.chunk(idx[rows])) * mesh.chunk(weight[rows])).sum().backward()
    for n, p in sharded.named_parameters():
        close(f"mesh FSDP2 grad {n}", p.grad.full_tensor(), want[n])


def check_final_state_dtype_under_autocast(group):
    """Under bf16 autocast the final state comes back in float32, as the layer's own (it
    came back in bf16); close to the one-process state at bf16's precision."""
    rank, K = dist.get_rank(group), dist.get_world_size(group)
    torch.manual_seed(1)
    for layer in (ParaGRU(4, 5), ParaLSTM(4, 3)):
        x = torch.randn(2, 8, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, final = layer(x)
            _, final_k = ContextParallel(layer, group)(time_chunk(x, rank, K))
        pairs = zip(final_k, final) if isinstance(final, tuple) else [(final_k, final)]
        for got, want in pairs:
            assert got.dtype == want.dtype == torch.float32, (type(layer).__name__, got.dtype)
            close(f"{type(layer).__name__} bf16 h_n", got, want, 2e-2)


def worker(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for K in (2, 3, 4):
            group = dist.new_group(list(range(K)))  # every rank takes part in creating it
            if rank >= K:
                continue
            check_layer(f"K={K} ParaGRU h0", lambda: ParaGRU(4, 5, dtype=torch.float64, newton=EXACT),
                        group, K, h0=True, resets=False)
            check_layer(f"K={K} ParaLSTM h0+resets",
                        lambda: ParaLSTM(4, 3, dtype=torch.float64, newton=EXACT, mode="parallel"),
                        group, K, h0=True, resets=True, lstm=True)
            check_layer(f"K={K} dense user cell resets",
                        lambda: RNN(DenseTanhCell(4), mode="sequential"), group, K, h0=True, resets=True)
            check_layer(f"K={K} ParaGRU boundary_tol",
                        lambda: ParaGRU(4, 5, dtype=torch.float64, newton=EXACT, recurrent_clip=0.5),
                        group, K, h0=False, resets=False, steps=16, boundary_tol=1e-8)
            if K == 2:
                check_language_model(group, K)
                check_final_state_dtype_under_autocast(group)
            if K in (2, 3):  # chunks of 7, 6 and 5, 4, 4 steps: the attention block's offsets
                check_language_model(group, K, steps=13, attn_every=2)
        check_data_by_context_mesh()
    finally:
        dist.destroy_process_group()


def fused_worker(rank: int, init_file: str, on_cuda: bool) -> None:
    """2 ranks, float32, the fused Triton kernels solving each chunk: ParaGRU with h0 and
    ParaLSTM with resets, against one process on the whole sequence.

    On CUDA: NCCL with one GPU per rank where there are 2 GPUs; else both ranks share GPU 0
    and talk through gloo (which moves CUDA tensors through the host). On the CPU: the
    kernels run in Triton's interpreter (the parent sets TRITON_INTERPRET=1), small sizes."""
    two_gpus = on_cuda and torch.cuda.device_count() >= 2
    if on_cuda:
        device = torch.device("cuda", rank if two_gpus else 0)
        torch.cuda.set_device(device)
        batch, steps, features, hidden, backend = 4, 1001, 64, 128, "auto"
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
        # chunks of 11 and 10 steps, a reset (seed 4) in each
        batch, steps, features, hidden, backend = 2, 21, 8, 16, "triton"
    dist.init_process_group("nccl" if two_gpus else "gloo", init_method=f"file://{init_file}",
                            rank=rank, world_size=2)
    try:
        for name, lstm in (("ParaGRU", False), ("ParaLSTM", True)):
            torch.manual_seed(4)
            layer = (ParaLSTM if lstm else ParaGRU)(features, hidden, recurrent_clip=0.5, device=device,
                                                    newton=NewtonConfig(max_iters=8), backend=backend)
            x = torch.randn(batch, steps, features, device=device)
            state = torch.randn(batch, hidden, device=device) * 0.5
            state = (state, state.flip(0)) if lstm else state
            cuts = (torch.rand(batch, steps, device=device) < 0.05) if lstm else None
            weight = torch.randn(batch, steps, hidden, device=device)
            x_ref = x.clone().requires_grad_()
            output, _ = layer(x_ref, state, resets=cuts)
            assert layer.last_solve.backend == "triton-fused", layer.last_solve
            (output * weight).sum().backward()
            want = {"x": x_ref.grad, **{n: p.grad.clone() for n, p in layer.named_parameters()}}
            layer.zero_grad()
            x_all = x.clone().requires_grad_()
            wrapped = ContextParallel(layer)
            out_k, _ = wrapped(time_chunk(x_all, rank, 2), state,
                               resets=None if cuts is None else time_chunk(cuts, rank, 2))
            assert wrapped.last_solve.backend == "triton-fused", wrapped.last_solve
            (out_k * time_chunk(weight, rank, 2)).sum().backward()
            where = "cuda" if on_cuda else "interpreter"
            close(f"{where} {name} output", out_k, time_chunk(output, rank, 2), 1e-4)
            for key, got in (("x", summed(x_all.grad, None)),
                             *((n, summed(p.grad, None)) for n, p in layer.named_parameters())):
                scale = want[key].abs().max().item()
                close(f"{where} {name} grad {key} (relative)", got / scale, want[key] / scale, 1e-4)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[2:] in (["--cuda"], ["--interpret"]):
        mp.spawn(fused_worker, args=(sys.argv[1], sys.argv[2] == "--cuda"), nprocs=2)
    else:
        mp.spawn(worker, args=(sys.argv[1],), nprocs=WORLD)
