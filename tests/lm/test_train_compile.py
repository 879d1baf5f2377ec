"""torch.compile of the language models in training (``pararnn train --compile``).

On the CPU the ParaGRU/ParaLSTM blocks run the fused Triton solve (the GPU's path) in
Triton's interpreter (``conftest.py``), compiled with ``aot_eager``: Dynamo's trace,
AOTAutograd's joint graph and the registered ops' fake implementations, without
inductor's code generation.
The GPU test compiles the ``small`` models with inductor in bf16.
"""

import contextlib
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import pararnn.train.loop as loop
from pararnn.cli import main
from pararnn.models import build_model, preset
from pararnn.train import TrainConfig, open_checkpoint, train
from pararnn.train.checkpoint import load_model
from pararnn.train.metrics import read_metrics
from source_corpus import write_source_corpus

pytest.importorskip("triton")

RNN_MODELS = ("paragru", "paralstm")
# the small-model tests run where the fused kernels do: on the GPU when there is one
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def force_fused(lm):
    """Every ParaRNN block on the fused Triton solve (``auto`` takes it on CUDA only)."""
    for block in lm.blocks:
        block.mixer.rnn.backend = "triton"
    return lm


def small_lm(model: str):
    """Two tuned blocks (conv + SiLU, gated RMSNorm, residual scales, chrono init) with a
    16-channel state: one channel block per kernel program keeps the interpreter fast."""
    cfg = preset(model, None, vocab_size=32, block="tuned", d_model=32, n_layers=2, rnn_hidden=16)
    return force_fused(build_model(cfg)).to(DEVICE)


def loss_and_grads(run, lm, x, y, autocast=None):
    """The loss of ``run`` (the LM or its compiled form) and the gradients it leaves in ``lm``."""
    lm.zero_grad(set_to_none=True)
    with autocast or contextlib.nullcontext():
        loss = run(x, y)
    loss.backward()
    return [loss.detach()] + [p.grad for p in lm.parameters()]


@pytest.mark.parametrize("model", RNN_MODELS)
def test_compiled_lm_matches_eager_in_one_graph(model):
    """fullgraph=True: the whole LM, blocks and fused solves included, is one graph."""
    lm = small_lm(model)
    x, y = torch.randint(0, 32, (2, 2, 8), device=DEVICE).unbind(0)
    torch._dynamo.reset()
    compiled = torch.compile(lm, fullgraph=True, backend="aot_eager")
    want = loss_and_grads(lm, lm, x, y)
    got = loss_and_grads(compiled, lm, x, y)
    assert all(block.mixer.rnn.last_solve.backend == "triton-fused" for block in lm.blocks)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return write_source_corpus(tmp_path_factory.mktemp("corpus"), files=10, chars=1500)


def run_config(corpus_dir, out, **overrides):
    # one block, one kernel program per solve: the interpreter takes ~1 s per launch
    fields = dict(model="paragru", size="nano", model_options={"d_model": 32, "rnn_hidden": 16, "n_layers": 1},
                  data=str(corpus_dir), out=str(out), seq_len=8, batch_size=1, max_steps=5,
                  eval_every=5, ckpt_every=3, eval_tokens=16, log_every=1, progress=False,
                  device=DEVICE, dtype="float32")
    return TrainConfig(**{**fields, **overrides})


def train_losses(out):
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]


def test_compiled_training_one_graph_checkpoint_and_resume(corpus_dir, tmp_path, monkeypatch):
    """Three compiled training steps trace one graph and never recompile (the solver's
    per-call host work adds no failing guard, nor does the eager validation after step 2,
    which switches the model to eval mode and back); the checkpoint loads into an uncompiled
    model; resuming compiled continues the run as an eager run of the same length does.
    (The loop treats every model alike; ParaLSTM's graph is checked above.)"""
    model = "paragru"
    monkeypatch.setattr(loop, "build_model", lambda cfg: force_fused(build_model(cfg)))
    real_batch = loop.train_batch

    def dying_batch(tokens, step, **kw):
        if step == 3:
            raise KeyboardInterrupt  # as if killed after the checkpoint of step 3
        return real_batch(tokens, step, **kw)

    compiled_out, eager_out = tmp_path / "compiled", tmp_path / "eager"
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(loop, "train_batch", dying_batch)
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(KeyboardInterrupt):
        train(run_config(corpus_dir, compiled_out, model=model, compile="aot_eager", eval_every=2))
    monkeypatch.setattr(loop, "train_batch", real_batch)
    assert counters["stats"]["unique_graphs"] == 1

    ckpt = open_checkpoint(compiled_out)
    assert not [k for k in ckpt.model_state() if "_orig_mod" in k]
    restored = load_model(ckpt, torch.device("cpu"))  # strict: every name as the plain model's
    assert restored.cfg.model == model

    torch._dynamo.reset()  # the resumed run compiles its own model
    train(run_config(corpus_dir, compiled_out, model=model, compile="aot_eager", resume=True))
    train(run_config(corpus_dir, eager_out, model=model))
    compiled, eager = train_losses(compiled_out), train_losses(eager_out)
    assert len(compiled) == len(eager) == 5
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_cuda_graph_config_needs_inductor_and_one_micro_batch(corpus_dir, tmp_path):
    for compile in (False, "aot_eager"):
        with pytest.raises(ValueError, match="--cuda-graph .* needs --compile"):
            run_config(corpus_dir, tmp_path, compile=compile, cuda_graph=True).check()
    # the graphs' pool holds the first micro-batch's gradients: no accumulation into them
    for bad in ({"grad_accum": 2}, {"fsdp": True}):
        with pytest.raises(ValueError, match="one micro-batch per step on one process"):
            run_config(corpus_dir, tmp_path, compile=True, cuda_graph=True, **bad).check()
    run_config(corpus_dir, tmp_path, compile=True, cuda_graph=True).check()


def test_cli_cuda_graph_implies_compile(monkeypatch):
    seen = []
    monkeypatch.setattr(loop, "train", seen.append)
    main(["train", "--model", "paragru", "--size", "nano", "--cuda-graph"])
    main(["train", "--model", "paragru", "--size", "nano"])
    assert [(c.compile, c.cuda_graph) for c in seen] == [(True, True), (False, False)]


def test_cuda_graph_training_marks_every_replay(corpus_dir, tmp_path, monkeypatch):
    """The loop compiles in reduce-overhead mode and starts a new CUDA-graph step before
    each step's forward (the last step's loss was added up, its gradients used and freed by
    then). The compile itself is replaced here (inductor has no CUDA graphs on a CPU); the
    GPU test below runs it."""
    modes, marks = [], []
    monkeypatch.setattr(loop, "compiled", lambda model, compile, cuda_graph=False:
                        modes.append((compile, cuda_graph)) or model)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    train(run_config(corpus_dir, tmp_path / "graphs", compile=True, cuda_graph=True,
                     max_steps=3, model="transformer", model_options={"d_model": 32, "n_layers": 1}))
    assert modes == [(True, True)] and len(marks) == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_training_matches_compiled_training(corpus_dir, tmp_path):
    """``--cuda-graph`` replays the kernels ``--compile`` launches: the same losses."""
    losses = {}
    for cuda_graph in (False, True):
        torch._dynamo.reset()
        out = tmp_path / f"graph{cuda_graph}"
        train(run_config(corpus_dir, out, compile=True, cuda_graph=cuda_graph, max_steps=4,
                         seq_len=64, batch_size=4, dtype="bfloat16"))
        losses[cuda_graph] = train_losses(out)
    assert len(losses[True]) == 4
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-3, atol=1e-3)


def test_sweep_compile_reaches_every_run(tmp_path, capsys):
    from pararnn.train.sweep import (Run, SweepConfig, load_sweep_config, parse_entry,
                                     save_sweep_config, train_command)
    entries = [parse_entry(name, "tuned") for name in ("transformer", "mamba2", "paragru", "paralstm")]
    for compile, cuda_graph in ((False, False), (True, False), (False, True)):
        cfg = SweepConfig(out=str(tmp_path / "sweep"), entries=entries, lrs={}, compile=compile,
                          cuda_graph=cuda_graph)
        for entry in entries:
            command = train_command(cfg, Run("lr", entry, 1e-3, 0, 4), tmp_path / "run")
            assert ("--compile" in command) is (compile or cuda_graph)
            assert ("--cuda-graph" in command) is cuda_graph
    save_sweep_config(cfg)
    assert load_sweep_config(tmp_path / "sweep").cuda_graph is True

    main(["sweep", "--out", str(tmp_path / "dry"), "--models", "paragru,transformer", "--size", "nano",
          "--compile", "--dry-run"])
    example = [line for line in capsys.readouterr().out.splitlines() if " train " in line]
    assert example and all("--compile" in line.split() for line in example)
    main(["sweep", "--out", str(tmp_path / "dry_graphs"), "--models", "paragru,transformer",
          "--size", "nano", "--cuda-graph", "--dry-run"])
    example = [line for line in capsys.readouterr().out.splitlines() if " train " in line]
    assert example and all({"--compile", "--cuda-graph"} <= set(line.split()) for line in example)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model", RNN_MODELS)
def test_inductor_compiled_small_lm_trains_like_eager_in_bf16(model):
    """The ``small`` LM compiled with inductor, bf16 autocast, T=512: one graph (no graph
    break), no recompilation over three training steps, no Dynamo warning about an
    lru_cache; the first loss and gradients are as close to the float32 eager ones as the
    eager bf16 step's are (up to a small factor: inductor rounds fused ops differently)."""
    torch.manual_seed(0)
    lm = build_model(preset(model, "small", vocab_size=320, block="auto")).cuda()
    batches = torch.randint(0, 320, (3, 2, 8, 512), device="cuda")

    def bf16():
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def first_step(run, autocast=None):
        values = loss_and_grads(run, lm, *batches[0], autocast)
        return torch.cat([v.float().flatten() for v in values[1:]]), values[0].float()

    ref_grad, ref_loss = first_step(lm)
    eager_grad, eager_loss = first_step(lm, bf16())
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(lm)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-3, fused=True)
    with warnings.catch_warnings(record=True) as caught, \
            torch._dynamo.config.patch(error_on_recompile=True):
        warnings.simplefilter("always")
        got_grad, got_loss = first_step(compiled, bf16())
        for x, y in batches[1:]:
            optimizer.step()
            assert torch.isfinite(loss_and_grads(compiled, lm, x, y, bf16())[0])
    assert counters["stats"]["unique_graphs"] == 1
    assert not [w for w in caught if "lru_cache" in str(w.message)]

    def error(a, b):
        return ((a - b).norm() / b.norm()).item()
    assert error(got_loss, ref_loss) <= 2 * error(eager_loss, ref_loss) + 2e-3
    assert error(got_grad, ref_grad) <= 2 * error(eager_grad, ref_grad) + 1e-2
