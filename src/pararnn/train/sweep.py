"""The fair language-model comparison protocol (``pararnn sweep``) and its report.

Stages, each a folder ``OUT/<stage>/<name>-lr<lr>-s<seed>/`` holding an ordinary
``pararnn train`` run (config.json, metrics.jsonl, train.log):

1. ``lr``: every model (and variant) at every learning rate of its own grid, seed 0,
   short budget;
2. ``seeds``: every model at its best stage-1 LR, longer budget, several seeds;
3. ``throughput``: every model alone on the device (runs one at a time), a short run
   whose tokens/s and MFU are not slowed by concurrent runs.

Every run sees the same batches in the same order (``--data-seed 0``); ``--seed`` changes
only the initialisation. Runs of a stage go ``--jobs`` at a time as subprocesses (a small
model does not fill a large GPU). A run whose ``result.json`` exists is skipped, so
re-running the same command continues an interrupted sweep. A run checkpoints every
:data:`CKPT_EVERY` steps (at least half-way) and, when stopped by SIGTERM (the sweep's
``time_limit``, Ctrl-C, ``timeout``), at the step it reached; the next invocation resumes
it there with the same batches and LR schedule. Checkpoints are deleted once a run has
finished (the metrics are what the report needs). The corpus is encoded once per sweep
into ``OUT/tokens`` and the runs read it from there.

Time budgets (for a GPU lent in calls of a few minutes): ``time_limit`` stops the
invocation after that many seconds (runs in flight checkpoint and stop); ``finish_within``
starts a run only if the work in flight plus its own fits in that many seconds, predicted
from :data:`EXPECTED_TOKENS_PER_S` (runs sharing the device split it, with a small measured
gain for sharing: :func:`shared_gain`). A stage left unfinished ends the invocation (the next
stage needs it); re-running continues it.

:func:`write_report` rebuilds ``summary.json``, ``summary.md`` and the validation-curve
plots from the run folders alone (``pararnn compare OUT``).
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..models import build_model
from ..models.config import BLOCKS, MODELS, ModelConfig, parse_model_options, preset
from ..models.flops import forward_flops_per_token
from .checkpoint import write_text_atomic
from .metrics import read_metrics

STAGES = ("lr", "seeds", "throughput")

# tokens/s of each model on one H200 at --size small, batch 32 x 512, bf16, eager, the blocks
# then default (ParaRNN: tuned, purely recurrent; the hybrid default ran ~5% faster than it
# in a shared sweep), alone (benchmarks/gpu_lm_speed.py, 2026-12-02: results/gpu_h200_2026-12-02c/speed/),
# except Mamba2: alone 229k, but launch-bound, it kept ~220k while sharing the GPU with two
# other runs, so as a share of the device it counts as about twice that. Other sizes scale
# these by FLOPs per token (expected_tokens_per_s). Used to predict run times for
# `finish_within` and the driver's plan, nothing else.
EXPECTED_TOKENS_PER_S = {"transformer": 640e3, "mamba2": 450e3, "paragru": 407e3, "paralstm": 427e3}
# Runs sharing the device do more work per second together than one run alone: a run at
# --size small is partly host-bound, so the GPU has room for others. Measured on the H200
# (2026-12-02, prose-byte sweep): 8 runs together did 1.69 times the work of one alone (the
# sum over runs of shared / alone tokens/s), 5 runs 1.22. Predictions take k runs to share
# the device at 1 + SHARED_GAIN_PER_RUN * (k - 1) (1.2 for 5 runs, 1.35 for 8): below both
# measurements, so a run predicted to fit still does.
SHARED_GAIN_PER_RUN = 0.05
STARTUP_S = 45  # per run: start-up, corpus loading, first-step compilation and autotuning
CKPT_EVERY = 500  # steps between a run's periodic checkpoints

# per-model LR grids (4 values spanning 8x) around the best rates found so far at the
# small size: attention prefers lower rates than the recurrent mixers
DEFAULT_LRS = {
    "transformer": [2.5e-4, 5e-4, 1e-3, 2e-3],
    "mamba2": [5e-4, 1e-3, 2e-3, 4e-3],
    "paragru": [1e-3, 2e-3, 4e-3, 8e-3],
    "paralstm": [1e-3, 2e-3, 4e-3, 8e-3],
}


# training options a variant may change (as `pararnn train --flag value`)
TRAIN_OPTIONS = ("schedule", "recurrent_lr_mult", "weight_decay", "warmup_steps", "min_lr_ratio", "grad_clip")


@dataclass
class Entry:
    """One model of the comparison: a base model plus ModelConfig and training overrides."""

    name: str
    model: str
    block: str
    options: dict = field(default_factory=dict)
    train_options: dict = field(default_factory=dict)


@dataclass
class SweepConfig:
    out: str
    entries: list[Entry]
    lrs: dict[str, list[float]]  # entry name -> LR grid
    stages: list[str] = field(default_factory=lambda: ["lr", "seeds"])
    size: str = "small"
    seq_len: int = 512
    batch_size: int = 32
    lr_steps: int = 400
    final_steps: int = 1600
    throughput_steps: int = 100
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    data: str | None = None
    tokenizer: str = "byte"
    vocab_size: int = 4096
    eval_every: int = 100
    eval_tokens: int = 262144
    jobs: int = 1
    device: str = "auto"
    dtype: str = "auto"
    keep_checkpoints: bool = False
    compile: bool = False  # every run with `pararnn train --compile` (all models alike)
    cuda_graph: bool = False  # every run with `pararnn train --cuda-graph` (implies compile)
    time_limit: float | None = None  # seconds this invocation may run (then runs checkpoint and stop)
    finish_within: float | None = None  # start only runs predicted to end within these seconds
    tokens_per_s: dict = field(default_factory=lambda: dict(EXPECTED_TOKENS_PER_S))  # model -> rate
    # model -> tokens/s of one run alone at this `size`, measured (--tokens-per-s): replaces
    # the estimate from `tokens_per_s` scaled by FLOPs, which is pessimistic above small
    measured_tokens_per_s: dict = field(default_factory=dict)


def parse_entry(spec: str, block: str) -> Entry:
    """A model name (``paragru``) or a variant ``NAME=key=value,...`` whose ``NAME`` starts
    with a model, e.g. ``paragru+expand2=rnn_expand=2``. The key ``block`` picks the block
    (``standard``/``paper``/``tuned``/``hybrid``), keys of :data:`TRAIN_OPTIONS` are
    training options, every other key is a ModelConfig override."""
    name, sep, options_text = spec.partition("=")
    name = name.strip()
    model = name.split("+", 1)[0]
    if model not in MODELS:
        raise ValueError(f"--variant/--models entry {spec!r} must start with a model "
                         f"({', '.join(MODELS)}), e.g. paragru+expand2=rnn_expand=2")
    if any(c in name for c in "/\\ "):
        raise ValueError(f"entry name {name!r} must be a plain folder name")
    if sep and not options_text.strip():
        raise ValueError(f"variant {spec!r} has no options after '='")
    parts = [p.strip() for p in options_text.split(",") if p.strip()]
    bad = [p for p in parts if "=" not in p]
    if bad:
        raise ValueError(f"variant {spec!r}: option {bad[0]!r} must look like key=value")
    pairs = dict(p.split("=", 1) for p in parts)
    block = pairs.pop("block", block).strip()
    if block not in BLOCKS or block == "auto":
        raise ValueError(f"block of {name!r} must be one of {', '.join(b for b in BLOCKS if b != 'auto')}, "
                         f"got {block!r}")
    train_options = {}
    for key in [k for k in pairs if k.strip() in TRAIN_OPTIONS]:
        value = pairs.pop(key).strip()
        try:
            train_options[key.strip()] = json.loads(value)
        except ValueError:
            train_options[key.strip()] = value
    from .loop import TrainConfig
    TrainConfig(**train_options).check()  # a bad value fails here, not in every run
    options = parse_model_options(",".join(f"{k}={v}" for k, v in pairs.items()), model)
    return Entry(name, model, block, options, train_options)


def _numbers(text: str, what: str, kind=float) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None


def parse_rates(specs: list[str]) -> dict[str, float]:
    """``--tokens-per-s MODEL=RATE`` specs (each may list several, comma-separated) as
    {model: tokens/s}."""
    rates = {}
    for spec in (part.strip() for text in specs for part in text.split(",") if part.strip()):
        model, _, value = spec.partition("=")
        if model not in EXPECTED_TOKENS_PER_S:
            raise ValueError(f"--tokens-per-s {spec!r}: {model!r} is not one of "
                             f"{', '.join(EXPECTED_TOKENS_PER_S)}")
        rate = _numbers(value, f"--tokens-per-s {model}")
        if len(rate) != 1 or not rate[0] > 0:
            raise ValueError(f"--tokens-per-s {model} must be one positive number, got {value!r}")
        rates[model] = rate[0]
    return rates


def parse_sweep_lists(*, models: str, variants: list[str], lr_grids: list[str], stages: str,
                      seeds: str, rnn_block: str) -> dict:
    """The ``entries``, ``lrs``, ``stages`` and ``seeds`` of a :class:`SweepConfig` from the
    command line's ``--models a,b``, ``--variant`` specs, ``--lrs NAME=a,b`` specs,
    ``--stages a,b`` and ``--seeds 0,1``. ParaRNN entries get ``rnn_block``, the others
    the standard block (unless a variant says ``block=...``)."""
    def block_of(spec: str) -> str:
        return rnn_block if spec.split("+", 1)[0].split("=", 1)[0].strip() in ("paragru", "paralstm") else "standard"

    specs = [m.strip() for m in models.split(",") if m.strip()] + list(variants)
    entries = [parse_entry(spec, block_of(spec)) for spec in specs]
    names = [e.name for e in entries]
    if not entries or len(set(names)) != len(names):
        raise ValueError(f"--models/--variant must name distinct entries, got {', '.join(names) or 'none'}")
    lrs = {e.name: list(DEFAULT_LRS[e.model]) for e in entries}
    for spec in lr_grids:
        name, _, grid = spec.partition("=")
        if name not in lrs:
            raise ValueError(f"--lrs {spec!r}: {name!r} is not one of {', '.join(names)}")
        lrs[name] = _numbers(grid, f"--lrs {name}")
        if not lrs[name] or min(lrs[name]) <= 0:
            raise ValueError(f"--lrs {name} must list positive learning rates")
    stage_list = [s.strip() for s in stages.split(",") if s.strip()]
    if not stage_list or any(s not in STAGES for s in stage_list):
        raise ValueError(f"--stages must be a comma-separated subset of {', '.join(STAGES)}, got {stages!r}")
    seed_list = _numbers(seeds, "--seeds", int)
    if not seed_list:
        raise ValueError("--seeds must list at least one seed")
    return {"entries": entries, "lrs": lrs, "stages": stage_list, "seeds": seed_list}


def format_lr(lr: float) -> str:
    return f"{lr:.3g}".replace("e-0", "e-").replace("e+0", "e")


def run_name(entry_name: str, lr: float, seed: int) -> str:
    return f"{entry_name}-lr{format_lr(lr)}-s{seed}"


@dataclass
class Run:
    stage: str
    entry: Entry
    lr: float
    seed: int
    steps: int

    def folder(self, out: Path) -> Path:
        return out / self.stage / run_name(self.entry.name, self.lr, self.seed)


def train_command(cfg: SweepConfig, run: Run, folder: Path) -> list[str]:
    """The ``pararnn train`` command line of one run."""
    throughput = run.stage == "throughput"
    cmd = [sys.executable, "-m", "pararnn", "train", "--model", run.entry.model,
           "--size", cfg.size, "--block", run.entry.block, "--out", str(folder),
           "--tokenizer", cfg.tokenizer, "--vocab-size", str(cfg.vocab_size),
           "--max-steps", str(run.steps), "--seq-len", str(cfg.seq_len),
           "--batch-size", str(cfg.batch_size), "--lr", repr(run.lr), "--seed", str(run.seed),
           "--data-seed", "0", "--eval-every", str(run.steps if throughput else cfg.eval_every),
           "--eval-tokens", str(cfg.eval_tokens), "--ckpt-every", str(max(1, min(CKPT_EVERY, run.steps // 2))),
           "--keep-checkpoints", "1", "--log-every", "10", "--no-progress", "--resume",
           "--token-cache", str(Path(cfg.out) / "tokens"),
           "--device", cfg.device, "--dtype", cfg.dtype]
    if run.entry.options:
        cmd += ["--model-options", ",".join(f"{k}={json.dumps(v)}" for k, v in run.entry.options.items())]
    for key, value in run.entry.train_options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    if cfg.compile or cfg.cuda_graph:
        cmd.append("--compile")
    if cfg.cuda_graph:
        cmd.append("--cuda-graph")
    if cfg.data is not None:
        cmd += ["--data", cfg.data]
    if cfg.tokenizer == "bpe":
        cmd += ["--tokenizer-from", str(Path(cfg.out) / "tokenizer")]
    return cmd


def prepare_data(cfg: SweepConfig, say=print) -> None:
    """Train the BPE once for every run of the sweep (each run would otherwise train the
    same tokenizer again), then encode the corpus into the runs' token cache."""
    from ..data import BPETokenizer, ByteTokenizer, load_corpus, load_tokenizer
    from ..data.cache import encode_corpus
    corpus = load_corpus(cfg.data)
    folder = Path(cfg.out) / "tokenizer"
    if cfg.tokenizer == "byte":
        tokenizer = ByteTokenizer()
    elif (folder / "tokenizer.json").exists():
        tokenizer = load_tokenizer(folder)
    else:
        say(f"training a BPE tokenizer of {cfg.vocab_size} tokens on the training split")
        tokenizer = BPETokenizer.train(corpus.train, cfg.vocab_size)
        tmp = folder.with_name(f".tokenizer.tmp{os.getpid()}")  # renamed into place when complete
        tmp.mkdir(parents=True, exist_ok=True)
        tokenizer.save(tmp)
        os.replace(tmp, folder)
    train, val = encode_corpus(tokenizer, corpus, Path(cfg.out) / "tokens")
    say(f"data: {corpus.name}: {corpus.num_chars:,} characters, {len(train):,} training / "
        f"{len(val):,} held-out tokens ({cfg.tokenizer} tokenizer)")


def is_finished(folder: Path) -> bool:
    return (folder / "result.json").exists()


def check_run_config(folder: Path, cfg: SweepConfig, entry: Entry) -> None:
    """Raise if the run in ``folder`` was started with another model configuration than
    ``entry``'s (a default block that changed since, a restored pack of another sweep):
    it would be skipped as finished, or resumed, and reported under the wrong name."""
    path = folder / "config.json"
    if not path.exists():
        return
    recorded = json.loads(path.read_text())["model"]
    planned = preset(entry.model, cfg.size, block=entry.block, **entry.options).to_dict()
    defaults = ModelConfig(model=entry.model).to_dict()  # for fields older runs did not record
    derived = {"vocab_size", "output_size"} | ({"mlp_hidden"} if planned["mlp_hidden"] is None else set())
    differ = [f"{key} {recorded.get(key, defaults[key])!r} there, {value!r} here"
              for key, value in planned.items()
              if key not in derived and recorded.get(key, defaults[key]) != value]
    if differ:
        raise ValueError(f"{folder} holds a run of another configuration than entry {entry.name!r} "
                         f"({'; '.join(differ)}): move it out of the sweep folder, or name the "
                         "entry as a variant with these options")


def diverged(folder: Path) -> bool:
    """Whether the run in ``folder`` stopped because its loss became inf/NaN."""
    log = folder / "train.log"
    return log.exists() and "the training loss became" in log.read_text(errors="replace")


def run_result(folder: Path) -> dict:
    """Final validation metrics, speed and configuration of a finished run folder."""
    records = read_metrics(folder / "metrics.jsonl")
    config = json.loads((folder / "config.json").read_text())
    val = [r for r in records if r.get("kind") == "val"]
    train = [r for r in records if r.get("kind") == "train"]
    if not val or not train:
        raise ValueError(f"run {folder} has no validation or training records")
    late = train[len(train) // 2:]  # the second half leaves out compilation and warm-up

    def median(key):
        values = sorted(r[key] for r in late if key in r)
        return values[len(values) // 2] if values else None

    return {"run": folder.name, "model": config["train"]["model"], "lr": config["train"]["lr"],
            "seed": config["train"]["seed"], "params": config.get("params"),
            "device": config.get("device_name"), "finished": _utc_now(),
            "load_avg_1min": os.getloadavg()[0],  # CPU contention while the run finished
            "steps": val[-1]["step"], "tokens": val[-1]["tokens"], "val_loss": val[-1]["val_loss"],
            "val_bpb": val[-1]["val_bpb"], "tok_per_s": median("tok_per_s"), "mfu": median("mfu"),
            "curve": [(r["tokens"], r["val_loss"]) for r in val]}


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def plan(cfg: SweepConfig, stage: str) -> list[Run]:
    """The runs of ``stage`` (``seeds`` and ``throughput`` need stage ``lr`` finished, unless
    an entry's LR grid has one value)."""
    out = Path(cfg.out)
    if stage == "lr":  # LR-major order: each wave of concurrent runs mixes the models
        longest = max(len(cfg.lrs[e.name]) for e in cfg.entries)
        runs = [Run("lr", e, cfg.lrs[e.name][i], 0, cfg.lr_steps)
                for i in range(longest) for e in cfg.entries if i < len(cfg.lrs[e.name])]
        for run in runs:
            check_run_config(run.folder(out), cfg, run.entry)
        return runs
    best = best_lrs(out, cfg)
    for e in cfg.entries:  # a one-value grid is a given LR: nothing to sweep first
        if e.name not in best and len(cfg.lrs[e.name]) == 1:
            best[e.name] = {"lr": cfg.lrs[e.name][0], "at_edge": False}
    missing = [e.name for e in cfg.entries if e.name not in best]
    if missing:
        raise ValueError(f"stage {stage} needs the lr stage of {', '.join(missing)} finished first")
    if stage == "seeds":  # seed-major: a sweep cut short has the first seed of every model
        runs = [Run("seeds", e, best[e.name]["lr"], s, cfg.final_steps) for s in cfg.seeds for e in cfg.entries]
    else:
        runs = [Run("throughput", e, best[e.name]["lr"], 0, cfg.throughput_steps) for e in cfg.entries]
    for run in runs:
        check_run_config(run.folder(out), cfg, run.entry)
    return runs


def best_lrs(out: Path, cfg: SweepConfig) -> dict[str, dict]:
    """Entry name -> its finished stage-1 run with the lowest validation loss (and
    ``at_edge``: the best LR is the smallest or largest of the grid, so the grid should
    be widened)."""
    best = {}
    for entry in cfg.entries:
        results = []
        for lr in cfg.lrs[entry.name]:
            folder = Run("lr", entry, lr, 0, cfg.lr_steps).folder(out)
            check_run_config(folder, cfg, entry)
            if is_finished(folder):
                results.append(json.loads((folder / "result.json").read_text()))
        finite = [r for r in results if math.isfinite(r["val_loss"])]
        if len(results) == len(cfg.lrs[entry.name]) and finite:
            winner = min(finite, key=lambda r: r["val_loss"])
            grid = cfg.lrs[entry.name]
            best[entry.name] = {**winner, "at_edge": winner["lr"] in (min(grid), max(grid))}
    return best


def shared_gain(runs: int) -> float:
    """How many times the work of one run alone ``runs`` runs sharing the device do per
    second together (:data:`SHARED_GAIN_PER_RUN`)."""
    return 1.0 + SHARED_GAIN_PER_RUN * max(runs - 1, 0)


@functools.lru_cache(maxsize=None)
def _flops_per_token(model: str, size: str, block: str, options: tuple, vocab_size: int,
                     seq_len: int) -> float:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        lm = build_model(preset(model, size, block=block, vocab_size=vocab_size, **dict(options)))
    return forward_flops_per_token(lm, seq_len)


def expected_tokens_per_s(cfg: SweepConfig, entry: Entry) -> float:
    """The entry's model's measured rate at ``cfg.size`` (``cfg.measured_tokens_per_s``), else
    ``cfg.tokens_per_s`` of its model (rates at ``--size small``) scaled to ``cfg.size`` by
    forward FLOPs per token: a bigger model is at most that much slower (a small one is
    partly host-bound, so it is less), a smaller one at most that much faster."""
    if entry.model in cfg.measured_tokens_per_s:
        return cfg.measured_tokens_per_s[entry.model]
    rate = cfg.tokens_per_s[entry.model]
    if cfg.size == "small":
        return rate
    flops = functools.partial(_flops_per_token, entry.model, block=entry.block,
                              options=tuple(sorted(entry.options.items())),
                              vocab_size=cfg.vocab_size, seq_len=cfg.seq_len)
    return rate * flops("small") / flops(cfg.size)


def run_seconds(cfg: SweepConfig, run: Run, from_step: int = 0) -> float:
    """Predicted device seconds of ``run`` alone from ``from_step`` on: training and
    validation (a forward pass costs about a third of a training step). Start-up
    (:data:`STARTUP_S`) is mostly CPU work and overlaps other runs, so it is not included."""
    rate = expected_tokens_per_s(cfg, run.entry)
    steps = run.steps - from_step
    evals = math.ceil(steps / (run.steps if run.stage == "throughput" else cfg.eval_every))
    tokens = steps * cfg.batch_size * cfg.seq_len + evals * cfg.eval_tokens / 3
    return tokens / rate


def estimate(cfg: SweepConfig) -> list[dict]:
    """Per stage of ``cfg.stages``: its runs, those not finished, tokens per run and the
    predicted device seconds of the unfinished ones (:func:`run_seconds`, from their
    checkpoints; plus one :data:`STARTUP_S` per wave of ``jobs`` runs). Before the LR
    stage has finished, the later stages are estimated at the first LR of each grid."""
    out, rows = Path(cfg.out), []
    for stage in [s for s in STAGES if s in cfg.stages]:
        try:
            runs = plan(cfg, stage)
        except ValueError:  # the best LRs are not known yet; the cost does not depend on them
            steps, seeds = (cfg.final_steps, cfg.seeds) if stage == "seeds" else (cfg.throughput_steps, [0])
            runs = [Run(stage, e, cfg.lrs[e.name][0], s, steps) for e in cfg.entries for s in seeds]
        left = [r for r in runs if not is_finished(r.folder(out))]
        jobs = 1 if stage == "throughput" else cfg.jobs
        seconds = sum(run_seconds(cfg, r, steps_done(r.folder(out))) for r in left)
        rows.append({"stage": stage, "runs": len(runs), "left": len(left),
                     "tokens_per_run": runs[0].steps * cfg.batch_size * cfg.seq_len,
                     "device_s": seconds / shared_gain(min(jobs, len(left)))
                                 + STARTUP_S * math.ceil(len(left) / jobs)})
    return rows


def steps_done(folder: Path) -> int:
    """The step of a run's newest checkpoint (where it resumes), 0 without one."""
    from .checkpoint import CheckpointError, has_checkpoint, open_checkpoint
    if not has_checkpoint(folder):
        return 0
    try:
        return int(open_checkpoint(folder).meta["step"])
    except CheckpointError:
        return 0


def _progress(folder: Path, at_start: int, launched: float) -> int:
    """The step a run in flight has reached: its last training record, else where it started
    (records of an earlier attempt, before the run rewrote the file, do not count)."""
    log = folder / "metrics.jsonl"
    if not log.exists() or log.stat().st_mtime < launched:
        return at_start
    steps = [r["step"] for r in read_metrics(log) if r.get("kind") == "train"]
    return max([at_start] + steps)


def execute(cfg: SweepConfig, runs: list[Run], jobs: int, say=print, deadline: float | None = None,
            finish_by: float | None = None) -> list[str]:
    """Run the unfinished ``runs``, ``jobs`` at a time, until ``deadline``, starting a run
    only when the work in flight and its own are predicted to end by ``finish_by`` (both
    ``time.time()`` values, None: no limit); return the folders that failed."""
    out = Path(cfg.out)
    todo = [r for r in runs if not is_finished(r.folder(out))]
    say(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to go, {jobs} at a time")
    if not todo:
        return []
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # concurrent CPU runs would oversubscribe the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    if jobs > 1:  # Triton autotunes once (Mamba2's kernels: ~1 min) and the next runs reuse it
        env.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    running: list[tuple[subprocess.Popen, Run, Path, float]] = []
    failed = []
    try:
        _drive(cfg, todo, running, failed, jobs, env, say, deadline, finish_by)
    finally:  # interrupted (Ctrl-C, SIGTERM from `timeout`): stop the runs in flight too
        for proc, *_ in running:
            proc.terminate()
        for proc, *_ in running:
            proc.wait()
    return failed


def _drive(cfg: SweepConfig, todo: list[Run], running: list, failed: list[str], jobs: int,
           env: dict, say, deadline: float | None, finish_by: float | None) -> None:
    out = Path(cfg.out)
    starts = {id(run): steps_done(run.folder(out)) for run in todo}  # resumed runs start later
    skipped: list[Run] = []
    while todo or running:
        if deadline is not None and time.time() >= deadline:
            say(f"  time limit: stopping {len(running)} run(s) in flight (they resume from a "
                f"checkpoint at the step they reached); {len(todo) + len(skipped)} not started")
            return
        while todo and len(running) < jobs:
            run = todo.pop(0)
            folder = run.folder(out)
            if not _fits(cfg, run, starts[id(run)], running, finish_by, deadline):
                skipped.append(run)
                continue
            folder.mkdir(parents=True, exist_ok=True)
            log = open(folder / "train.log", "a")  # a restarted run appends
            proc = subprocess.Popen(train_command(cfg, run, folder), stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
            running.append((proc, run, folder, time.perf_counter(), starts[id(run)], time.time()))
        if not running and skipped:
            if deadline is not None and time.time() + STARTUP_S > deadline:
                why = f"less than a run's start-up ({STARTUP_S} s) is left of --time-limit"
            else:
                why = "predicted not to finish within --finish-within"
            say(f"  {len(skipped)} run(s) not started: {why}")
            return
        time.sleep(0.2)
        for item in list(running):
            proc, run, folder, start, *_ = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode == 0:
                result = run_result(folder)
                result.update(stage=run.stage, entry=run.entry.name, wall_s=time.perf_counter() - start)
                write_text_atomic(folder / "result.json", json.dumps(result, indent=1))
                if not cfg.keep_checkpoints:  # and the per-run plot: curves_<stage>.png has it
                    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
                    (folder / "latest").unlink(missing_ok=True)
                    (folder / "loss.png").unlink(missing_ok=True)
                say(f"  done {run.stage}/{folder.name}: val loss {result['val_loss']:.4f} "
                    f"({result['wall_s']:.0f} s)")
            elif diverged(folder):  # a finished data point: this LR is too high
                result = {"run": folder.name, "model": run.entry.model, "lr": run.lr, "seed": run.seed,
                          "params": None, "steps": None, "tokens": None, "val_loss": math.inf,
                          "val_bpb": math.inf, "tok_per_s": None, "mfu": None, "curve": [],
                          "diverged": True, "stage": run.stage, "entry": run.entry.name,
                          "wall_s": time.perf_counter() - start}
                write_text_atomic(folder / "result.json", json.dumps(result, indent=1))
                say(f"  diverged {run.stage}/{folder.name}")
            else:
                failed.append(str(folder))
                say(f"  FAILED {run.stage}/{folder.name} (exit {proc.returncode}); see {folder / 'train.log'}")
            todo[:0], skipped = skipped, []  # less work in flight: the skipped runs may fit now


def _fits(cfg: SweepConfig, run: Run, from_step: int, running: list, finish_by: float | None,
          deadline: float | None) -> bool:
    """Whether ``run`` may start now: after its start-up, the predicted work of the runs in
    flight plus its own (runs sharing the device split it) ends by ``finish_by``; and at
    least its start-up fits before ``deadline``."""
    now = time.time()
    if deadline is not None and now + STARTUP_S > deadline:
        return False
    if finish_by is None:
        return True
    in_flight = sum(_remaining_seconds(cfg, r, folder, at, launched) for _, r, folder, _, at, launched in running)
    work = in_flight + run_seconds(cfg, run, from_step)
    return now + STARTUP_S + work / shared_gain(len(running) + 1) <= finish_by


def _remaining_seconds(cfg: SweepConfig, run: Run, folder: Path, at_start: int, launched: float) -> float:
    """Predicted device seconds a run in flight still needs (alone on the device)."""
    return run_seconds(cfg, run, _progress(folder, at_start, launched))


def save_sweep_config(cfg: SweepConfig, command: str = "") -> None:
    """Write ``OUT/sweep.json``: this invocation's settings, plus the entries and LR grids
    of earlier invocations into the same folder (the report covers all of them; the runs
    of an invocation are those of its own entries only)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.json"
    merged = asdict(cfg)
    invocation = {"command": command, "started": _utc_now()}
    if path.exists():  # a re-run must describe the same runs, or skipping would mix them
        saved = json.loads(path.read_text())
        for key in ("size", "seq_len", "batch_size", "lr_steps", "data", "tokenizer", "vocab_size"):
            if saved.get(key) != getattr(cfg, key):
                raise ValueError(f"{out} holds a sweep with {key}={saved.get(key)!r}, not "
                                 f"{getattr(cfg, key)!r}; use the same value or another --out")
        known = {e["name"]: e for e in saved["entries"]}
        for entry in cfg.entries:
            if entry.name in known and Entry(**known[entry.name]) != entry:
                raise ValueError(f"{out} holds entry {entry.name!r} with other options "
                                 f"({known[entry.name]}); rename the variant")
        names = {e.name for e in cfg.entries}
        merged["entries"] = [e for e in saved["entries"] if e["name"] not in names] + merged["entries"]
        merged["lrs"] = {**saved["lrs"], **cfg.lrs}
        merged["invocations"] = saved.get("invocations", []) + [invocation]
    else:
        merged["invocations"] = [invocation]
    write_text_atomic(path, json.dumps(merged, indent=1))


def load_sweep_config(out: Path) -> SweepConfig:
    path = Path(out) / "sweep.json"
    if not path.exists():
        raise ValueError(f"{out} holds no sweep.json (not a `pararnn sweep` folder)")
    saved = json.loads(path.read_text())
    saved["entries"] = [Entry(**e) for e in saved["entries"]]
    saved.pop("invocations", None)
    return SweepConfig(**saved)


def sweep(cfg: SweepConfig, say=print, command: str = "") -> list[str]:
    """Run the stages in order (within ``cfg.time_limit``), then write the report; return
    the failed run folders. ``command``: the command line, recorded in ``sweep.json`` and
    the report."""
    start = time.time()
    deadline = None if cfg.time_limit is None else start + cfg.time_limit
    finish_by = None if cfg.finish_within is None else start + cfg.finish_within
    save_sweep_config(cfg, command)
    out, failed, prepared = Path(cfg.out), [], False
    for stage in [s for s in STAGES if s in cfg.stages]:
        runs = plan(cfg, stage)
        say(f"stage {stage}:")
        if not prepared and not all(is_finished(r.folder(out)) for r in runs):
            prepare_data(cfg, say)
            prepared = True
        failed += execute(cfg, runs, 1 if stage == "throughput" else cfg.jobs, say, deadline, finish_by)
        if not all(is_finished(r.folder(out)) for r in runs):
            say(f"stage {stage} is unfinished: re-run the same command to continue it")
            break
    write_report(out)
    return failed


# --- the report ------------------------------------------------------------------------

def _collect(out: Path, stage: str) -> list[dict]:
    folder = out / stage
    if not folder.is_dir():
        return []
    return [json.loads((d / "result.json").read_text()) for d in sorted(folder.iterdir())
            if (d / "result.json").exists()]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def _mean_or_none(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def _params(count: int | None) -> str:
    return "n/a" if count is None else f"{count / 1e6:.2f}M"


def summarize_sweep(out: Path) -> dict:
    """Every stage's results, the best LR per entry and the seed means, from the run folders."""
    cfg = load_sweep_config(out)
    invocations = json.loads((Path(out) / "sweep.json").read_text()).get("invocations", [])
    summary = {"config": asdict(cfg), "invocations": invocations, "lr": _collect(out, "lr"),
               "best_lr": best_lrs(out, cfg),
               "seeds": [], "throughput": _collect(out, "throughput")}
    summary["seed_runs"] = _collect(out, "seeds")
    by_entry: dict[str, list[dict]] = {}
    for r in summary["seed_runs"]:
        by_entry.setdefault(r["entry"], []).append(r)
    for name, results in by_entry.items():
        loss, loss_std = _mean_std([r["val_loss"] for r in results])
        bpb, bpb_std = _mean_std([r["val_bpb"] for r in results])
        summary["seeds"].append({
            "entry": name, "model": results[0]["model"], "lr": results[0]["lr"],
            "seeds": sorted(r["seed"] for r in results), "tokens": results[0]["tokens"],
            "params": results[0]["params"], "val_loss": loss, "val_loss_std": loss_std,
            "val_bpb": bpb, "val_bpb_std": bpb_std,
            "tok_per_s": _mean_or_none([r["tok_per_s"] for r in results]),
            "mfu": _mean_or_none([r["mfu"] for r in results])})
    summary["seeds"].sort(key=lambda r: r["val_loss"])
    for curve_free in summary["lr"] + summary["throughput"] + summary["seed_runs"]:
        curve_free.pop("curve", None)
    return summary


def summary_markdown(summary: dict) -> str:
    cfg = summary["config"]
    lines = [f"# LM comparison: size {cfg['size']}, seq {cfg['seq_len']}, batch {cfg['batch_size']}, "
             f"{cfg['tokenizer']} tokenizer, data {cfg['data'] or 'Python stdlib'}", "",
             "Same batches in the same order for every run (data seed 0); the seed changes the "
             "initialisation only. Val loss in nats/token; tokens/s and MFU of stage lr/seeds "
             "runs are measured with other runs sharing the device (see the throughput table "
             "for runs alone).", ""]
    runs = summary["lr"] + summary["throughput"] + summary["seed_runs"]
    devices = sorted({r["device"] for r in runs if r.get("device")})
    finished = sorted(r["finished"] for r in runs if r.get("finished"))
    if runs:
        lines += [f"Device: {', '.join(devices) or 'n/a'}; runs finished "
                  f"{finished[0] if finished else 'n/a'} .. {finished[-1] if finished else 'n/a'}. Commands:", ""]
        lines += [f"    {i['command']}    # {i['started']}" for i in summary["invocations"]] + [""]
    if summary["lr"]:
        lines += [f"## Stage 1: LR sweep ({cfg['lr_steps']} steps, seed 0)", "",
                  "| entry | lr | val loss | bits/byte | tokens | params | tokens/s | MFU |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(summary["lr"], key=lambda r: (r["entry"], r["lr"])):
            lines.append(f"| {r['entry']} | {format_lr(r['lr'])} | {r['val_loss']:.4f} | {r['val_bpb']:.4f} | "
                         f"{_fmt(r['tokens'], ',')} | {_params(r['params'])} | "
                         f"{_fmt(r['tok_per_s'], ',.0f')} | "
                         f"{_fmt(r['mfu'], '.1%')} |")
        best = summary["best_lr"]
        lines += ["", "Best LR per entry (* = at the edge of its grid: widen the grid); a variant "
                  "is compared with its base model at each one's best LR:", "",
                  "| entry | best lr | val loss | bits/byte | vs its model | vs transformer | vs mamba2 |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in sorted(best.items(), key=lambda kv: kv[1]["val_loss"]):
            edge = "*" if r["at_edge"] else ""
            gaps = [f"{r['val_loss'] / best[m]['val_loss'] - 1:+.1%}" if m in best and m != name else "—"
                    for m in (r["model"], "transformer", "mamba2")]
            lines.append(f"| {name} | {format_lr(r['lr'])}{edge} | {r['val_loss']:.4f} | {r['val_bpb']:.4f} | "
                         + " | ".join(gaps) + " |")
        lines.append("")
    if summary["seeds"]:
        reference = {r["model"]: r["val_loss"] for r in summary["seeds"] if r["entry"] == r["model"]}
        lines += [f"## Stage 2: best LR, {cfg['final_steps']} steps, mean ± std over seeds", "",
                  "| entry | lr | seeds | val loss | bits/byte | vs transformer | vs mamba2 | tokens | params "
                  "| tokens/s | MFU |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in summary["seeds"]:
            gaps = [f"{r['val_loss'] / reference[m] - 1:+.1%}" if m in reference else "n/a"
                    for m in ("transformer", "mamba2")]
            lines.append(f"| {r['entry']} | {format_lr(r['lr'])} | {','.join(map(str, r['seeds']))} | "
                         f"{r['val_loss']:.4f} ± {r['val_loss_std']:.4f} | {r['val_bpb']:.4f} ± "
                         f"{r['val_bpb_std']:.4f} | {gaps[0]} | {gaps[1]} | {r['tokens']:,} | "
                         f"{_params(r['params'])} | {_fmt(r['tok_per_s'], ',.0f')} | {_fmt(r['mfu'], '.1%')} |")
        lines.append("")
    if summary["throughput"]:
        lines += [f"## Throughput: one run at a time, {cfg['throughput_steps']} steps", "",
                  "| entry | tokens/s | MFU | params |", "|---|---:|---:|---:|"]
        for r in sorted(summary["throughput"], key=lambda r: r["entry"]):
            lines.append(f"| {r['entry']} | {_fmt(r['tok_per_s'], ',.0f')} | {_fmt(r['mfu'], '.1%')} | "
                         f"{_params(r['params'])} |")
        lines += ["", "MFU = training FLOPs/token (3 x forward; see pararnn.models.flops) x tokens/s "
                  "/ dense bf16 peak (989.4 TFLOP/s for an H100/H200).", ""]
    return "\n".join(lines)


def plot_curves(out: Path, stage: str, png: Path) -> bool:
    """Validation loss against tokens of every finished run of ``stage`` (False: none)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = _collect(out, stage)
    if not results:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        tokens, losses = zip(*r["curve"])
        ax.plot(tokens, losses, "o-", markersize=2, linewidth=1, label=r["run"])
    ax.set_xlabel("tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"{out.name}: stage {stage}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def write_report(out: Path) -> dict:
    """(Re)write ``summary.json``, ``summary.md`` and ``curves_<stage>.png`` in ``out``."""
    out = Path(out)
    summary = summarize_sweep(out)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    write_text_atomic(out / "summary.md", summary_markdown(summary))
    for stage in ("lr", "seeds"):
        plot_curves(out, stage, out / f"curves_{stage}.png")
    return summary
