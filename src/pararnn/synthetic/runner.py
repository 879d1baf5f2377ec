"""Train one model on one synthetic task and measure its test accuracy.

:func:`run` trains with AdamW and a cosine learning rate (linear warm-up) on a fixed
training set, stops early once the validation accuracy reaches ``target``, then scores
held-out test sets at the training length and at 2x and 4x it (length generalisation):
the accuracy over every scored position and at the last position only. Each run says how
its training ended (:func:`training_status`), so that an under-trained run is not read
as a model's limit.

For the ParaRNN models the test sets are scored three times: through the parallel
Newton solve with exactly ``max_iters=3`` and no convergence check, through the solver's
default :class:`~pararnn.NewtonConfig` (which may check and fall back), and through the
exact recurrence (``mode="sequential"``). The largest absolute difference between the
parallel and the sequential state sequences shows where Newton did not converge.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..solver import NewtonConfig
from ..train.schedules import cosine_decay
from .data import disjoint_splits
from .models import BLOCKS, build_synthetic_model, paper_accuracy
from .tasks import IGNORE, get_task

# the RNN solves scored at test time: name -> (mode, newton); None is the solver's default
SOLVES = {"newton3": ("parallel", NewtonConfig(max_iters=3, tol=None)),
          "default": ("parallel", None),
          "sequential": ("sequential", None)}


@dataclass
class RunConfig:
    task: str
    model: str
    length: int = 100
    n_train: int = 10_000
    n_val: int = 1_000
    n_test: int = 100_000
    n_test_long: int = 10_000  # test sequences at 2x and 4x the length
    length_factors: tuple[int, ...] = (1, 2, 4)
    steps: int = 2_000
    batch_size: int = 256
    lr: float = 5e-4
    min_lr_ratio: float = 0.0
    warmup_steps: int | None = None  # None: 5% of steps
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 100
    target: float = 0.999  # stop once the validation accuracy reaches this
    time_limit: float | None = None  # seconds of training at most
    eval_batch_size: int = 2_048
    seed: int = 0
    width: int = 64
    heads: int = 4
    block: str = "auto"  # see synthetic_config: "auto" (the paper's choice), "paper", "bare"
    device: str = "cpu"

    def __post_init__(self) -> None:
        task = get_task(self.task)
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {self.block!r}")
        for name in ("length", "n_train", "n_val", "n_test", "n_test_long", "steps", "batch_size",
                     "eval_every", "eval_batch_size", "width", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.length < task.min_length:
            raise ValueError(f"length must be >= {task.min_length} for {self.task}, got {self.length}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.target <= 1:
            raise ValueError(f"target must be a validation accuracy in [0, 1], got {self.target!r}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be > 0 seconds or None, got {self.time_limit!r}")


def lr_at(step: int, cfg: RunConfig, elapsed: float = 0.0) -> float:
    """Linear warm-up, then a cosine from ``lr`` down to ``min_lr_ratio * lr`` over the
    tighter of the two budgets: ``steps``, or ``time_limit`` seconds of training
    (``elapsed`` so far), so that a run cut off by time still ends at the low rate."""
    warmup = max(1, cfg.steps // 20) if cfg.warmup_steps is None else cfg.warmup_steps
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    if cfg.time_limit is not None:
        progress = max(progress, elapsed / cfg.time_limit)
    return cfg.lr * cosine_decay(progress, cfg.min_lr_ratio)


def rnn_layer(model):
    """The ParaGRU/ParaLSTM layer of a one-layer ParaRNN model (None for other mixers)."""
    return getattr(model.blocks[0].mixer, "rnn", None)


class _SolveAs:
    """Run the model's RNN layer with ``mode``/``newton`` and record its output states."""

    def __init__(self, rnn, mode: str, newton: NewtonConfig | None) -> None:
        self.rnn, self.mode, self.newton = rnn, mode, newton
        self.states = None

    def __enter__(self):
        self.saved = self.rnn.mode, self.rnn.newton
        self.rnn.mode, self.rnn.newton = self.mode, self.newton
        self.hook = self.rnn.register_forward_hook(self._record)
        return self

    def _record(self, module, args, output):
        self.states = output[0]

    def __exit__(self, *exc):
        self.hook.remove()
        self.rnn.mode, self.rnn.newton = self.saved


class _Tally:
    """Running counts of correct predictions (all scored positions and the last one)."""

    def __init__(self) -> None:
        self.correct = self.total = self.last_correct = self.last_total = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        scored = labels != IGNORE
        hit = (logits.argmax(dim=-1) == labels) & scored
        self.correct += int(hit.sum())
        self.total += int(scored.sum())
        self.last_correct += int(hit[:, -1].sum())
        self.last_total += int(scored[:, -1].sum())

    def result(self) -> dict:
        return {"acc": self.correct / max(1, self.total),
                "acc_last": self.last_correct / self.last_total if self.last_total else None}


@torch.no_grad()
def evaluate(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, device) -> dict:
    """``acc`` (every scored position) and ``acc_last`` (the last position) of ``model``.

    For a ParaRNN model these come from the exact recurrence, and ``solves`` holds the
    accuracies of every solve of :data:`SOLVES`, with ``max_state_gap`` (largest
    ``|h_parallel - h_sequential|``) for the parallel ones."""
    was_training = model.training
    model.eval()
    rnn = rnn_layer(model)
    tallies = {"model": _Tally()} if rnn is None else {name: _Tally() for name in SOLVES}
    gaps = {name: 0.0 for name in SOLVES if name != "sequential"}
    fell_back, backends = False, {}
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size].to(device)
        y = labels[start:start + batch_size].to(device)
        if rnn is None:
            tallies["model"].add(model(x), y)
            continue
        runs = {}
        for name, (mode, newton) in SOLVES.items():
            with _SolveAs(rnn, mode, newton) as solve:
                tallies[name].add(model(x), y)
            runs[name] = solve.states.float()
            backends[name] = rnn.last_solve.backend  # e.g. torch (Newton + scan) or triton (fused)
            if name == "default":
                fell_back |= bool(getattr(rnn.last_solve, "fell_back", False))
        for name in gaps:
            gaps[name] = max(gaps[name], float((runs[name] - runs["sequential"]).abs().amax()))
    model.train(was_training)
    if rnn is None:
        return tallies["model"].result()
    out = {name: {**tally.result(), "backend": backends.get(name)} for name, tally in tallies.items()}
    for name, gap in gaps.items():
        out[name]["max_state_gap"] = gap
    out["default"]["fell_back"] = fell_back
    # the headline accuracy: the exact recurrence
    return {**out["sequential"], "solves": out}


def training_status(curve: list[dict], reached_target: bool) -> str:
    """How a run ended: ``"solved"`` (validation accuracy reached the target),
    ``"still learning"`` (it rose by more than 1 point over the last quarter of the
    steps: more training would likely help, so the run is under-trained) or
    ``"plateau"`` (it did not)."""
    if reached_target:
        return "solved"
    if len(curve) < 2:
        return "still learning"
    end = curve[-1]
    # the last evaluation at or before three quarters of the run
    before = [point for point in curve if point["step"] <= 0.75 * end["step"]] or curve[:1]
    return "still learning" if end["val_acc"] - before[-1]["val_acc"] > 0.01 else "plateau"


def _quick_accuracy(model, inputs, labels, batch_size, device) -> float:
    """Validation accuracy during training, with the model's own solver settings."""
    was_training = model.training
    model.eval()
    tally = _Tally()
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            tally.add(model(inputs[start:start + batch_size].to(device)),
                      labels[start:start + batch_size].to(device))
    model.train(was_training)
    return tally.result()["acc"]


def run(cfg: RunConfig, log=print) -> dict:
    """Train ``cfg.model`` on ``cfg.task`` and return a self-describing result dict."""
    task = get_task(cfg.task)
    device = torch.device(cfg.device)
    data = disjoint_splits(task, cfg.length, {"train": cfg.n_train, "val": cfg.n_val,
                                              "test": cfg.n_test}, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_synthetic_model(task, cfg.model, block=cfg.block, width=cfg.width,
                                  heads=cfg.heads).to(device)
    params = model.num_params()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_x, train_y = (t.to(device) for t in data["train"])
    sampler = torch.Generator().manual_seed(cfg.seed + 1)

    curve, val_acc, step, stop, start = [], 0.0, 0, "steps", time.perf_counter()
    model.train()
    while step < cfg.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg, time.perf_counter() - start)
        batch = torch.randint(0, cfg.n_train, (cfg.batch_size,), generator=sampler).to(device)
        logits = model(train_x[batch])
        loss = F.cross_entropy(logits.float().flatten(0, 1), train_y[batch].flatten(), ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        out_of_time = cfg.time_limit is not None and time.perf_counter() - start > cfg.time_limit
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            loss = loss.item()  # only here: a device sync every step would slow the GPU
            val_acc = _quick_accuracy(model, *data["val"], cfg.eval_batch_size, device)
            curve.append({"step": step, "loss": loss, "val_acc": val_acc})
            log(f"  {cfg.task}/{cfg.model} step {step}: loss {loss:.4f}, val acc {val_acc:.4f}")
            if val_acc >= cfg.target or out_of_time:
                stop = "target" if val_acc >= cfg.target else "time"
                break
    train_s = time.perf_counter() - start

    eval_start = time.perf_counter()
    test = {}
    for factor in cfg.length_factors:
        length = factor * cfg.length
        if factor == 1:
            inputs, labels = data["test"]
        else:  # other lengths cannot overlap the training set; their own seed
            generator = torch.Generator().manual_seed(cfg.seed * 1000 + factor)
            inputs, labels = task.generate(cfg.n_test_long, length, generator)
        test[str(length)] = {"n": len(inputs), **evaluate(model, inputs, labels, cfg.eval_batch_size, device)}
    return {
        "task": cfg.task, "model": cfg.model, "task_spec": task.describe(), "params": params, "steps": step,
        "stopped_early": val_acc >= cfg.target, "stop_reason": stop,
        "status": training_status(curve, val_acc >= cfg.target), "train_seconds": round(train_s, 2),
        "eval_seconds": round(time.perf_counter() - eval_start, 2),
        "final_val_acc": val_acc, "test": test, "test_acc": test[str(cfg.length)]["acc"],
        "paper_test_acc": paper_accuracy(cfg.task, cfg.model),
        "model_config": model.cfg.to_dict(), "run_config": dataclasses.asdict(cfg), "curve": curve,
    }
