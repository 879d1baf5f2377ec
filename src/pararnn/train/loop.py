"""The training loop and evaluation (``pararnn train`` / ``pararnn eval``).

One function, :func:`train`, reads top to bottom: set up processes and the run folder,
load data and tokenizer, build the model and optimizer (or restore them from the latest
checkpoint), then loop: batch -> forward/backward (bf16 autocast on GPU) -> clip ->
AdamW step -> LR schedule (cosine or WSD), with logging, validation and checkpoints at fixed intervals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..cells.base import Cell
from ..data import (BPETokenizer, ByteTokenizer, DataError, eval_batches, eval_starts, load_corpus,
                    load_tokenizer, train_batch)
from ..data.batches import check_length
from ..data.cache import encode_corpus
from ..data.corpus import STDLIB, is_named_corpus
from ..models import SIZES, build_model, num_params, preset
from ..distributed import TRAIN_BOUNDARY_TOL, ContextMesh, context_layout, enable_context_parallel
from ..layers.projection import MultiHeadProjection
from ..models.config import MODELS, check_model_options, round_up
from ..models.flops import peak_flops, train_flops_per_token
from . import distributed as D
from .checkpoint import (CheckpointError, has_checkpoint, open_checkpoint, remove_stale_temporaries,
                         save_checkpoint, write_text_atomic)
from .memory import check_training_memory
from .metrics import MetricsLog, plot_losses
from .schedules import SCHEDULES


# the peak LR when none is given: each model's best of its 4-LR sweep at --size small with
# its default block (RESULTS.md section 1: hybrid ParaGRU 4e-3, hybrid ParaLSTM 2e-3; the
# purely recurrent ParaGRU, the default below 8 blocks, lost only 0.15% at 4e-3 against its
# best, 2e-3); one LR for all would favour some models (2e-3 left the Transformer 22% higher in
# loss than 1e-3 after 6.6M tokens)
DEFAULT_LR = {"transformer": 1e-3, "mamba2": 2e-3, "paragru": 4e-3, "paralstm": 2e-3}


# above this excess over the Transformer of the same size, training says the model is not
# parameter-matched (the presets are within 3% from `tiny` up, README "Language models")
PARAMS_MATCHED_WITHIN = 0.05


@dataclass
class TrainConfig:
    model: str = "paragru"
    size: str = "tiny"
    block: str = "auto"  # see models.config.preset: "hybrid" for ParaGRU/ParaLSTM, else "standard"
    model_options: dict = field(default_factory=dict)  # ModelConfig overrides, e.g. {"rnn_expand": 2}
    data: str | None = None  # None: the Python standard library's source; stored absolute
    out: str = "runs/tiny"
    # "byte" or "bpe" (trained on the training split, saved in the run); None: the kind of
    # tokenizer_from's, else byte
    tokenizer: str | None = None
    vocab_size: int = 4096  # BPE only
    tokenizer_from: str | None = None  # a folder with a tokenizer.json to reuse (no BPE training)
    token_cache: str | None = None  # a folder keeping the encoded corpus for later runs (data.cache)
    max_steps: int = 1000
    seq_len: int = 256
    batch_size: int = 16  # per process and micro-step
    grad_accum: int = 1
    lr: float | None = None  # None: DEFAULT_LR of the model
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # or "wsd": warm-up, constant, linear decay over the last 20%
    warmup_steps: int | None = None  # None: 5% of max_steps
    weight_decay: float = 0.1
    recurrent_lr_mult: float = 1.0  # LR multiplier of the ParaRNN cells' recurrent vectors
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_tokens: int = 65536
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0  # the model's initialisation (and the data order unless data_seed is set)
    data_seed: int | None = None  # the batches' order; None: seed
    peak_tflops: float | None = None  # for MFU; None: the device's dense bf16 peak if known
    device: str = "auto"
    dtype: str = "auto"  # "auto": bf16 autocast on GPU, float32 on CPU
    compile: bool | str = False  # True: torch.compile (inductor); a string names the backend
    # inductor's step replayed as CUDA graphs (torch.compile mode="reduce-overhead"): no host
    # cost per kernel launch; needs compile=True, one process, grad_accum=1; on a CPU it
    # compiles without graphs
    cuda_graph: bool = False
    fsdp: bool = False
    context_parallel: int = 1  # K ranks share each sequence, seq_len / K tokens each (torchrun)
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.model)  # an unknown model fails in check()
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_from).kind if self.tokenizer_from else "byte"

    def check(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {', '.join(SIZES)}")
        for name in ("max_steps", "seq_len", "batch_size", "grad_accum", "eval_every",
                     "ckpt_every", "log_every", "eval_tokens", "context_parallel",
                     "keep_checkpoints"):  # --resume needs a checkpoint kept
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"--dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.seq_len % self.context_parallel:
            raise ValueError(f"--seq-len {self.seq_len} must be a multiple of --context-parallel "
                             f"{self.context_parallel} (every rank gets an equal chunk)")
        if self.tokenizer not in ("byte", "bpe"):
            raise ValueError(f"--tokenizer must be byte or bpe, got {self.tokenizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be at least 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.weight_decay >= 0:
            raise ValueError(f"--weight-decay must be at least 0, got {self.weight_decay}")
        if not self.grad_clip > 0:
            raise ValueError(f"--grad-clip must be positive, got {self.grad_clip}")
        if not self.recurrent_lr_mult > 0:
            raise ValueError(f"--recurrent-lr-mult must be positive, got {self.recurrent_lr_mult}")
        if not isinstance(self.compile, (bool, str)) or self.compile == "":
            raise ValueError(f"compile must be a bool or a torch.compile backend name, got {self.compile!r}")
        if self.cuda_graph and self.compile is not True:
            raise ValueError("--cuda-graph replays inductor's compiled step: it needs --compile "
                             f"(inductor), got compile={self.compile!r}")
        if self.cuda_graph and (self.grad_accum > 1 or self.fsdp):
            # the first backward's parameter gradients live in the graphs' memory pool, which
            # the next micro-batch's replay overwrites: accumulating into them would be
            # silently wrong (pytorch/pytorch#169545, #96693)
            raise ValueError("--cuda-graph takes one micro-batch per step on one process: "
                             "not with --grad-accum > 1 or --fsdp")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ValueError(f"--peak-tflops must be positive, got {self.peak_tflops}")
        check_model_options(self.model_options, self.model)
        if "output_size" in self.model_options:
            raise ValueError("output_size is for classifier heads (pararnn.synthetic): a language "
                             "model's head predicts its vocabulary")

    @property
    def batch_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed


def autocast_for(device: torch.device, dtype: str):
    """bf16 autocast (weights and optimizer stay float32) or nothing."""
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def compiled(model: torch.nn.Module, compile: bool | str, cuda_graph: bool = False):
    """``model`` behind ``torch.compile`` (inductor for True, else the named backend), or
    ``model`` itself for False; ``cuda_graph``: inductor's ``reduce-overhead`` mode, which
    records the compiled forward and backward as CUDA graphs and replays them (each call
    must then follow ``torch.compiler.cudagraph_mark_step_begin()``: the previous call's
    outputs are overwritten).

    Only the training forward runs compiled: validation and checkpoints use ``model``
    itself, so saved weights have their plain names (no ``_orig_mod.`` prefix) and load
    uncompiled, and validation's other grad mode and last partial batch add no graphs.
    One graph serves every step: the batch shape and the solver's options do not change
    between steps, and what the solver does on the host per call (argument checks, the
    ``last_solve`` record) traces into the graph or its side effects, adding no guard that a
    later step fails (``tests/lm/test_train_compile.py``)."""
    if compile is False:
        return model
    if cuda_graph:
        return torch.compile(model, mode="reduce-overhead")
    return torch.compile(model, backend="inductor" if compile is True else compile)


def optimizer_groups(model: torch.nn.Module, *, lr: float, weight_decay: float,
                     recurrent_lr_mult: float = 1.0) -> list[dict]:
    """AdamW parameter groups, one rule for every model: weight decay on the matrices of
    linear maps (``nn.Linear``, the cells' multi-head projections) only; none on
    embeddings (also the tied output head), norms, biases, convolutions, residual scales,
    recurrent vectors (``a``, peepholes) or the SSM's ``A``, ``dt`` and ``D``. The
    ParaRNN cells' recurrent vectors learn at ``lr * recurrent_lr_mult``."""
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Linear, MultiHeadProjection))}
    recurrent = {id(p) for m in model.modules() if isinstance(m, Cell)
                 for name, p in m.named_parameters(recurse=False) if name in ("a", "peephole")}
    params = list(model.parameters())
    groups = [{"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay, "lr": lr},
              {"params": [p for p in params if id(p) not in decayed | recurrent], "weight_decay": 0.0, "lr": lr}]
    if recurrent:
        groups.append({"params": [p for p in params if id(p) in recurrent], "weight_decay": 0.0,
                       "lr": lr * recurrent_lr_mult})
    return groups


def build_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float,
                    recurrent_lr_mult: float = 1.0, device: torch.device) -> torch.optim.AdamW:
    """The training loop's AdamW over :func:`optimizer_groups`. Fused on the CPU as on CUDA:
    one kernel over every parameter, where the default (no foreach kernels on the CPU) runs
    ~10 ops per parameter tensor; the ParaRNN blocks hold more, smaller tensors than a
    Transformer's, and the `tiny` LM's optimizer step takes half the time fused
    (BENCHMARKS.md, "CPU training path, round 9")."""
    return torch.optim.AdamW(
        optimizer_groups(model, lr=lr, weight_decay=weight_decay, recurrent_lr_mult=recurrent_lr_mult),
        lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type in ("cpu", "cuda"))


@torch.no_grad()
def evaluate(model, tokens: np.ndarray, token_bytes: np.ndarray, *, seq_len: int, batch_size: int,
             max_windows: int | None, device: torch.device, autocast, info: D.DistInfo,
             context: ContextMesh | None = None, progress: str | None = None) -> dict:
    """Loss (nats/token), perplexity and bits per byte over non-overlapping windows.

    Every window counts once, however many processes share them: each scores its share,
    and a process with one window fewer scores a repeat of another that it does not count
    (FSDP needs every rank to run the same number of forward passes). Each window starts
    from an empty state. With a
    ``context`` mesh, a context group shares each window and every rank scores its chunk.
    ``progress``: the label of a progress bar over the batches (shown on the main process
    only, and removed when done), or None for no bar.
    """
    from tqdm import tqdm

    rank, world = (info.rank, info.world) if context is None else (context.data_rank, context.data_world)
    every = eval_starts(len(tokens), seq_len, max_windows)
    starts = every[rank::world]
    real = len(starts)  # the rest repeat a window, for an equal number of forwards per rank
    starts = np.concatenate([starts, every[:1].repeat(-(-len(every) // world) - real)])
    was_training = model.training
    model.eval()
    nats = count = nbytes = 0.0
    batches = eval_batches(tokens, starts, batch_size=batch_size, seq_len=seq_len)
    # during training tqdm puts this bar below the training bar, which stays in place
    batches = tqdm(batches, total=math.ceil(len(starts) / batch_size), desc=progress, unit="batch",
                   leave=False, dynamic_ncols=True,
                   disable=progress is None or not info.is_main)
    for x, y in batches:
        if context is not None:
            x, y = context.chunk(x), context.chunk(y)
        with autocast:
            logits = model(x.to(device))
        rows = min(len(y), real)
        real -= rows
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="none")
        nats += losses.view(y.shape)[:rows].sum().item()
        count += y[:rows].numel()
        nbytes += float(token_bytes[y[:rows].numpy()].sum())
    batches.close()
    model.train(was_training)
    nats, count, nbytes = D.all_reduce_sum([nats, count, nbytes], info)
    if count == 0:
        raise DataError(f"no validation window of {seq_len + 1} tokens fits the held-out data")
    loss = nats / count
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
            "val_bpb": nats / math.log(2) / max(nbytes, 1.0), "val_tokens": int(count)}


# what a resumed run must share with the checkpoint's: the model and its data; the seed
# (the initial weights and, without --data-seed, the batches' order); the step count and
# the optimizer's options, which the restored scheduler and optimizer state would override
_RESUMED_AS_SAVED = ("model", "size", "block", "model_options", "data", "tokenizer", "seq_len",
                     "batch_size", "grad_accum", "seed", "data_seed", "max_steps", "lr",
                     "min_lr_ratio", "schedule", "warmup_steps", "weight_decay",
                     "recurrent_lr_mult")


def _prepare_run_dir(cfg: TrainConfig):
    """The checkpoint to resume from (or None); refuse to overwrite another run."""
    run_dir = Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} exists and is not a directory")
    if cfg.resume and has_checkpoint(run_dir):
        ckpt = open_checkpoint(run_dir)
        saved = ckpt.meta["train_config"]
        # runs saved before an option existed ran with its default
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)} | {"model_options": {}}
        for key in _RESUMED_AS_SAVED:
            value = saved.get(key, defaults.get(key))
            same = _same_path(value, cfg.data) if key == "data" else value == getattr(cfg, key)
            if not same:
                raise CheckpointError(
                    f"the checkpoint in {run_dir} was trained with --{key.replace('_', '-')} "
                    f"{value}, not {getattr(cfg, key)}; use the same value or another --out")
        return ckpt
    if not cfg.resume and ((run_dir / "latest").exists() or (run_dir / "metrics.jsonl").exists()):
        raise ValueError(f"--out {run_dir} already holds a run; pass --resume to continue it "
                         "or choose another --out")
    return None


def _same_path(a: str | None, b: str | None) -> bool:
    """Same data (None names the default corpus; runs before paths were stored absolute
    hold them relative)."""
    a, b = (STDLIB if d is None else d for d in (a, b))
    return a == b or os.path.abspath(a) == os.path.abspath(b)


def train(cfg: TrainConfig) -> dict:
    """Train as configured; returns the last validation metrics."""
    cfg.check()
    if not is_named_corpus(cfg.data):
        # stored in the run as an absolute path, so that `pararnn eval` works from anywhere
        cfg = dataclasses.replace(cfg, data=os.path.abspath(os.path.expanduser(cfg.data)))
    info = D.init_distributed(cfg.device)
    try:
        with _stop_on_sigterm(info) as stop:
            result = _train(cfg, info, stop)
        D.wait_for_all(info)
        return result
    finally:
        D.close_distributed(info)


class _StopFlag:
    requested = False


@contextlib.contextmanager
def _stop_on_sigterm(info: D.DistInfo):
    """While training on one process (from the main thread), SIGTERM sets a flag instead of
    killing: the loop then saves a checkpoint at the step it reached and stops, so that
    ``--resume`` loses nothing. (With several processes the ranks could see the signal at
    different steps and deadlock in the collective checkpoint, so they keep the default.)"""
    flag = _StopFlag()
    if info.world > 1 or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag.requested = True
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train(cfg: TrainConfig, info: D.DistInfo, stop: _StopFlag) -> dict:
    device, run_dir = info.device, Path(cfg.out)
    ckpt = _prepare_run_dir(cfg)
    say = print if info.is_main else (lambda *a, **k: None)
    context = context_layout(cfg.context_parallel, info.rank, info.world, device.type)
    if cfg.cuda_graph and info.world > 1:
        raise ValueError("--cuda-graph takes one process (DDP's gradient hooks run outside "
                         f"the graphs); this run has {info.world}")
    if info.is_main:
        for stale in remove_stale_temporaries(run_dir):
            say(f"removed {stale}, left by a checkpoint write that did not finish")
    _check_memory(cfg, info)

    # --- data and tokenizer --------------------------------------------------------
    corpus = load_corpus(cfg.data)
    if ckpt is not None:
        tokenizer = ckpt.tokenizer()
    elif cfg.tokenizer_from is not None:
        tokenizer = load_tokenizer(cfg.tokenizer_from)
        if tokenizer.kind != cfg.tokenizer:
            raise ValueError(f"--tokenizer-from {cfg.tokenizer_from} holds a {tokenizer.kind} "
                             f"tokenizer, not {cfg.tokenizer}")
    elif cfg.tokenizer == "bpe":
        tokenizer = BPETokenizer.train(corpus.train, cfg.vocab_size)
    else:
        tokenizer = ByteTokenizer()
    train_tokens, val_tokens = encode_corpus(tokenizer, corpus, cfg.token_cache)
    check_length(train_tokens, cfg.seq_len, "training")
    check_length(val_tokens, cfg.seq_len, "held-out")
    token_bytes = tokenizer.token_bytes()
    say(f"data: {corpus.name}: {len(train_tokens):,} training / {len(val_tokens):,} held-out "
        f"tokens ({tokenizer.kind} tokenizer, vocab {tokenizer.vocab_size})")

    # --- model, optimizer, schedule ------------------------------------------------
    torch.manual_seed(cfg.seed)
    model_cfg = preset(cfg.model, cfg.size, vocab_size=round_up(tokenizer.vocab_size, 64),
                       block=cfg.block, **cfg.model_options)
    model = build_model(model_cfg).to(device)
    model_cfg = model.cfg  # with the derived fields (the matched MLP width) filled in
    flops_per_token = train_flops_per_token(model, cfg.seq_len)
    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops is not None else peak_flops(device)
    if context.size > 1:
        enable_context_parallel(model, context.group, boundary_tol=TRAIN_BOUNDARY_TOL)
        say(f"context parallel: {context.data_world} data x {context.size} context ranks")
    n_params = model.num_params()
    kinds = model_cfg.block_models
    attention = kinds.count("transformer") if model_cfg.is_rnn else 0
    layout = f", {len(kinds) - attention} {cfg.model} + {attention} attention blocks" if attention else ""
    say(f"model: {cfg.model} {cfg.size}{layout}: {n_params:,} parameters "
        f"({model.num_params(non_embedding=True):,} without the embedding); peak LR {cfg.lr:g}")
    if cfg.model != "transformer":  # against the Transformer of this size
        transformer = preset("transformer", cfg.size, vocab_size=model_cfg.vocab_size)
        excess = n_params / num_params(transformer) - 1
        if excess > PARAMS_MATCHED_WITHIN:
            say(f"note: {100 * excess:.0f}% more parameters than the Transformer of this size "
                "(its mixers alone outgrow a Transformer block, and the SwiGLU cannot shrink "
                "below its floor): not a parameter-matched comparison")
    model = D.wrap_model(model, info, cfg.fsdp)  # before the optimizer: FSDP swaps the parameters
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                recurrent_lr_mult=cfg.recurrent_lr_mult, device=device)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, cfg.max_steps // 20)
    schedule = SCHEDULES[cfg.schedule]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(
        s, warmup=warmup, total=cfg.max_steps, min_ratio=cfg.min_lr_ratio))

    raw = model.module if hasattr(model, "module") else model  # without DDP's wrapper
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * context.data_world
    step, tokens_seen = 0, 0
    if ckpt is not None:
        train_state = ckpt.train_state()
        D.load_full_state(raw, optimizer, ckpt.model_state(),
                          train_state["optimizer"], cfg.fsdp)
        scheduler.load_state_dict(train_state["scheduler"])
        _set_rng_state(train_state["rng"])
        step, tokens_seen = ckpt.meta["step"], ckpt.meta["tokens"]
        if tokens_seen != step * tokens_per_step:  # the same options, other process counts
            raise CheckpointError(
                f"the checkpoint in {run_dir} was trained on {tokens_seen // max(step, 1):,} tokens "
                f"per step, this run takes {tokens_per_step:,} (--batch-size x --seq-len x "
                f"--grad-accum x data-parallel processes): resume on as many processes")
        say(f"resumed from {ckpt.path} at step {step}")
    elif cfg.resume:
        say(f"no checkpoint in {run_dir} yet: starting from step 0")
    forward = compiled(model, cfg.compile, cfg.cuda_graph)
    autocast = autocast_for(device, cfg.dtype)

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(run_dir)
        write_text_atomic(run_dir / "config.json", json.dumps(
            {"train": dataclasses.asdict(cfg), "model": model_cfg.to_dict(),
             "params": n_params, "train_flops_per_token": flops_per_token,
             "peak_flops": peak, "device_name": _device_name(device)},
            indent=1))
    # records past the checkpoint's step (or all of them, for a run that died before its
    # first checkpoint) are dropped: this run writes them again
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=step) if info.is_main else None

    saved_step = step  # the step of the newest checkpoint on disk

    def checkpoint(val: dict | None) -> None:
        nonlocal saved_step
        saved_step = step
        model_state = D.full_model_state(raw, cfg.fsdp)
        optim_state = D.full_optimizer_state(model, optimizer, cfg.fsdp)
        if info.is_main:
            meta = {"step": step, "tokens": tokens_seen, "model": cfg.model,
                    "data_position": {"seed": cfg.batch_seed, "next_step": step},
                    "val": val, "model_config": model_cfg.to_dict(),
                    "train_config": dataclasses.asdict(cfg)}
            train_state = {"optimizer": optim_state, "scheduler": scheduler.state_dict(),
                           "rng": _rng_state()}
            save_checkpoint(run_dir, step, model_state, train_state, meta, tokenizer,
                            keep=cfg.keep_checkpoints)

    # --- the loop --------------------------------------------------------------------
    max_windows = max(1, cfg.eval_tokens // cfg.seq_len)
    val = None
    bar = _progress(cfg, step, info)
    model.train()
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    while step < cfg.max_steps:
        if stop.requested:  # SIGTERM (a sweep's time limit, `timeout`): keep the progress
            if step > saved_step:
                checkpoint(val)
            bar.close()
            raise KeyboardInterrupt(f"SIGTERM at step {step}: checkpoint saved, --resume continues here")
        lr = scheduler.get_last_lr()[0]
        step_loss = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x, y = train_batch(train_tokens, step, seed=cfg.batch_seed, batch_size=cfg.batch_size,
                               seq_len=cfg.seq_len, micro=micro, rank=context.data_rank,
                               world=context.data_world)
            x, y = context.chunk(x), context.chunk(y)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.cuda_graph:  # a new replay: the last step's outputs and gradients are dead
                torch.compiler.cudagraph_mark_step_begin()
            with D.no_grad_sync(model, skip=micro + 1 < cfg.grad_accum), autocast:
                loss = forward(x, y) / cfg.grad_accum
            loss.backward()
            step_loss += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        window_loss += step_loss
        window_steps += 1

        if step % cfg.log_every == 0 or step == cfg.max_steps:
            loss_value = D.all_reduce_sum([float(window_loss) / window_steps], info)[0] / info.world
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"the training loss became {loss_value} at step {step}")
            elapsed = time.perf_counter() - window_start
            tok_s = window_steps * tokens_per_step / elapsed
            if info.is_main:
                record = {"kind": "train", "step": step, "tokens": tokens_seen, "loss": loss_value,
                          "lr": lr, "grad_norm": float(_full(grad_norm)), "tok_per_s": tok_s}
                if peak:  # model FLOPs utilisation of all processes' devices together
                    record["mfu"] = tok_s * flops_per_token / (peak * info.world)
                metrics.log(record)
            bar.set_postfix_str(f"loss {loss_value:.3f} | {tok_s:,.0f} tok/s | lr {lr:.2e}")
            window_loss, window_steps = 0.0, 0
        bar.update(1)

        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val = evaluate(model, val_tokens, token_bytes, seq_len=cfg.seq_len,
                           batch_size=cfg.batch_size, max_windows=max_windows, device=device,
                           autocast=autocast, info=info, context=context,
                           progress=f"step {step}: validation" if cfg.progress else None)
            if info.is_main:
                metrics.log({"kind": "val", "step": step, "tokens": tokens_seen, **val})
                plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png",
                            f"{cfg.model} {cfg.size} ({corpus.name})")
                bar.write(f"step {step}: val loss {val['val_loss']:.4f}, ppl {val['val_ppl']:.2f}, "
                          f"{val['val_bpb']:.4f} bits/byte")
        if step % cfg.ckpt_every == 0 or step == cfg.max_steps:
            checkpoint(val)
        if step % cfg.log_every == 0:
            window_start = time.perf_counter()  # tokens/s leaves out validation and saving
    bar.close()
    say(f"done: {step} steps, {tokens_seen:,} tokens; run folder {run_dir}")
    return val


def _check_memory(cfg: TrainConfig, info: D.DistInfo) -> None:
    """Refuse a model that cannot fit before loading data or allocating anything."""
    if cfg.tokenizer_from is not None:  # the reused tokenizer's own vocabulary
        vocab = load_tokenizer(cfg.tokenizer_from).vocab_size
    else:
        vocab = cfg.vocab_size if cfg.tokenizer == "bpe" else ByteTokenizer.vocab_size
    model_cfg = preset(cfg.model, cfg.size, vocab_size=round_up(vocab, 64), block=cfg.block,
                       **cfg.model_options)
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and info.device.type == "cuda")
    # a context-parallel rank holds its chunk of every sequence
    check_training_memory(model_cfg, model=cfg.model, size=cfg.size, batch_size=cfg.batch_size,
                          seq_len=cfg.seq_len // cfg.context_parallel, device=info.device,
                          autocast_bf16=bf16, fsdp=cfg.fsdp, world=info.world)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({os.cpu_count()} cores)"


def _full(t):
    """A plain tensor from a DTensor (FSDP2's grad norm) or a tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _progress(cfg: TrainConfig, start: int, info: D.DistInfo):
    from tqdm import tqdm
    return tqdm(total=cfg.max_steps, initial=start, unit="step", dynamic_ncols=True,
                disable=not (cfg.progress and info.is_main))


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
