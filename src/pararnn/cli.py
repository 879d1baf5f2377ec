"""The ``pararnn`` command: train, evaluate and sample language models.

    pararnn train --model paragru --size tiny --out runs/tiny --max-steps 300
    pararnn eval --checkpoint runs/tiny
    pararnn generate --checkpoint runs/tiny --prompt "def " --max-new-tokens 200
    pararnn bench-decode --models paragru,transformer --size small --batch-sizes 1,16,256
    pararnn export --checkpoint runs/tiny --out hf/tiny
    pararnn sizes
    pararnn compare runs/a runs/b --plot compare.png
    pararnn sweep --out results/lm_quality --size small --jobs 6
    pararnn compare results/lm_quality
    pararnn synthetic --task parity --model paragru --out runs/synthetic

Bad input (missing or corrupt checkpoint, empty data, unknown model, ...) ends with one
line ``pararnn: error: ...`` and exit status 2; set ``PARARNN_TRACEBACK=1`` to see the
traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

from .models.config import BLOCKS, HYBRID_ATTN_EVERY, MODELS, SIZES


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to each help text, except where the text already says what
    the default is (options whose default None stands for something else)."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if action.default is None or "(default" in help_text:
            return help_text
        return super()._get_help_string(action)


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bf16 autocast on GPU, float32 on CPU")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pararnn", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    from .train.loop import DEFAULT_LR, TrainConfig
    d = TrainConfig()
    # every train/eval flag has a help text, and its default is shown after it
    t = sub.add_parser("train", help="train a language model (also under torchrun)",
                       formatter_class=_DefaultsFormatter)
    t.add_argument("--config", help="JSON file of option values (flag names, '_' or '-'); "
                   "flags on the command line override it (default: none)")
    t.add_argument("--model", default=d.model, help=f"one of {', '.join(MODELS)}")
    t.add_argument("--size", default=d.size, help=f"one of {', '.join(SIZES)} (see `pararnn sizes`)")
    t.add_argument("--block", default=d.block, choices=list(BLOCKS),
                   help="standard: the plain mixer; paper: + causal conv, gated RMSNorm, scaled "
                   "residuals (ParaRNN paper); tuned: paper + state 2x d_model + chrono memory init "
                   f"(ParaRNN models; RESULTS.md); hybrid: tuned + every {HYBRID_ATTN_EVERY}th block "
                   f"an attention block (models of >= {HYBRID_ATTN_EVERY} layers); auto: hybrid for "
                   "paragru/paralstm, standard otherwise")
    t.add_argument("--model-options", type=_model_options, default={}, metavar="KEY=VALUE,...",
                   help="ModelConfig overrides, e.g. rnn_expand=2,rnn_init=paper")
    t.add_argument("--data", default=d.data, help="text file or directory of text files, or "
                   "python:packages (the .py files of the standard library and site-packages; no "
                   "download) (default: the Python standard library's source, python:stdlib)")
    t.add_argument("--out", default=d.out, help="run folder: checkpoints, metrics.jsonl, loss.png")
    t.add_argument("--tokenizer", choices=["byte", "bpe"],
                   help="byte: the 256 byte values; bpe: trained on the training split, saved in the "
                   "run (default: byte, or the kind of --tokenizer-from's)")
    t.add_argument("--vocab-size", type=_positive_int, default=d.vocab_size,
                   help="BPE vocabulary size (--tokenizer bpe only)")
    t.add_argument("--tokenizer-from", default=d.tokenizer_from, metavar="DIR",
                   help="reuse the tokenizer.json in DIR (e.g. another run's) instead of making one "
                   "(default: none; the tokenizer is made by --tokenizer)")
    t.add_argument("--token-cache", default=d.token_cache, metavar="DIR",
                   help="keep the encoded corpus in DIR and reuse it in runs with the same data and "
                   "tokenizer (default: none, encode every time)")
    t.add_argument("--max-steps", type=int, default=d.max_steps,
                   help="optimizer steps to train; also the length of the LR schedule")
    t.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per training sequence")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per process and micro-step")
    t.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-steps per optimizer step")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: each model's "
                   "best at --size small, " + ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LR.items()) + ")")
    t.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio,
                   help="final LR / peak LR of the schedule")
    t.add_argument("--schedule", default=d.schedule, choices=["cosine", "wsd"],
                   help="cosine, or wsd: warm-up, constant, linear decay over the last 20%%")
    t.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="linear LR warm-up steps (default: 5%% of --max-steps)")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="AdamW weight decay, on the matrices of linear maps only (the same rule for every model)")
    t.add_argument("--recurrent-lr-mult", type=float, default=d.recurrent_lr_mult,
                   help="LR multiplier of the ParaRNN cells' recurrent vectors (a, peepholes)")
    t.add_argument("--grad-clip", type=float, default=d.grad_clip, help="clip the gradient norm to this")
    t.add_argument("--eval-every", type=int, default=d.eval_every, help="validate every this many steps")
    t.add_argument("--eval-tokens", type=int, default=d.eval_tokens,
                   help="held-out tokens scored per validation (also `pararnn eval`'s default)")
    t.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="checkpoint every this many steps")
    t.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help="newest checkpoints kept on disk")
    t.add_argument("--log-every", type=int, default=d.log_every,
                   help="write a training record to metrics.jsonl every this many steps")
    t.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the initial weights (and of the batch order without --data-seed)")
    t.add_argument("--data-seed", type=int, default=d.data_seed,
                   help="order of the training batches (default: --seed)")
    t.add_argument("--peak-tflops", type=float, default=d.peak_tflops,
                   help="device peak for the logged MFU (default: dense bf16 peak of known GPUs)")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the training forward and backward (inductor; validation runs eager)")
    t.add_argument("--cuda-graph", action="store_true",
                   help="with --compile (implied): replay the compiled step as CUDA graphs "
                   "(torch.compile mode='reduce-overhead'; no host cost per kernel launch); "
                   "one process, --grad-accum 1")
    t.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (under torchrun)")
    t.add_argument("--context-parallel", type=_positive_int, default=d.context_parallel, metavar="K",
                   help="split each sequence along time over K ranks (under torchrun; ParaGRU/ParaLSTM)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    t.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bars (default: shown)")
    _add_runtime(t)

    e = sub.add_parser("eval", help="validation loss, perplexity and bits per byte of a checkpoint",
                       formatter_class=_DefaultsFormatter)
    e.add_argument("--checkpoint", required=True, help="run folder (its latest usable checkpoint) "
                   "or checkpoint folder")
    e.add_argument("--data", help="text file or folder (default: the data the run was trained on)")
    e.add_argument("--split", choices=["held-out", "all"],
                   help="which part of the data to score (default: held-out without --data, "
                   "all of --data with it); a folder's held-out files depend only on their "
                   "paths inside it, so a moved copy splits the same")
    e.add_argument("--seq-len", type=_positive_int,
                   help="tokens per window (default: the training --seq-len)")
    e.add_argument("--batch-size", type=_positive_int, default=8, help="windows per forward pass")
    e.add_argument("--tokens", "--max-tokens", dest="tokens", type=_positive_int,
                   help="score at most this many tokens, evenly spread over the data (default: "
                   "the run's --eval-tokens, what each validation during training scored)")
    e.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bar (default: shown)")
    _add_runtime(e)

    g = sub.add_parser("generate", help="sample text from a checkpoint")
    g.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    g.add_argument("--prompt", default="\n", help="text to continue")
    g.add_argument("--max-new-tokens", type=_positive_int, default=200)
    g.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    g.add_argument("--top-k", type=_positive_int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop-at-eos", action="store_true", help="stop at the end-of-text token")
    g.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                   help="decode step by step in eager mode on a GPU too")
    _add_compile_flag(g)
    _add_runtime(g)

    b = sub.add_parser("bench-decode", help="decode speed and memory against batch size and context")
    b.add_argument("--checkpoint", help="a checkpoint; or give --models and --size (random weights)")
    b.add_argument("--models", "--model", default="paragru,transformer",
                   help=f"comma-separated, from {', '.join(MODELS)}; MODEL:BLOCK gives that entry "
                   "its own block (paragru:tuned,paragru:hybrid: both blocks in one run)")
    b.add_argument("--size", choices=list(SIZES), default="tiny")
    b.add_argument("--block", default="auto", choices=list(BLOCKS),
                   help="block of the random-weight models (as `pararnn train --block`)")
    b.add_argument("--contexts", default="512,8192,32768", help="comma-separated context lengths")
    b.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128,256", help="comma-separated")
    b.add_argument("--new-tokens", type=_positive_int, default=64, help="timed decode steps")
    b.add_argument("--prefill", choices=["synthetic", "real"], default="synthetic",
                   help="real: run a random prompt of each context length; synthetic: random "
                   "decode state (same step cost, no prefill time)")
    b.add_argument("--bandwidth", type=float, default=4.25e12,
                   help="memory bandwidth in bytes/s for the bound (default: measured on an H200)")
    b.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false")
    _add_compile_flag(b)
    b.add_argument("--json", help="also write the rows to this JSON file (rewritten after each row)")
    _add_runtime(b)

    x = sub.add_parser("export", help="write a checkpoint as a Hugging Face model folder (needs pararnn[hf])")
    x.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    x.add_argument("--out", required=True, help="folder for config.json, model.safetensors, tokenizer")

    sub.add_parser("sizes", help="parameter counts of every model at every size")

    c = sub.add_parser("compare", help="table and validation-curve plot of several runs, "
                       "or the report of a `pararnn sweep` folder")
    c.add_argument("runs", nargs="+", help="run folders, or one sweep folder (rewrites its "
                   "summary.json, summary.md and curves_*.png)")
    c.add_argument("--plot", help="write the validation curves to this PNG")
    c.add_argument("--title", default="")

    from .train.sweep import DEFAULT_LRS
    w = sub.add_parser("sweep", help="fair LM comparison: per-model LR sweep, then the best LR "
                       "over seeds, then throughput (concurrent `pararnn train` runs)")
    w.add_argument("--out", required=True, help="sweep folder; re-running skips finished runs")
    w.add_argument("--models", default="transformer,mamba2,paragru,paralstm",
                   help="comma-separated models (empty: variants only)")
    w.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE,...",
                   help="a model with ModelConfig overrides, NAME starting with the model, e.g. "
                   "paragru+expand2=rnn_expand=2 (block=standard|paper|tuned|hybrid picks the block; schedule, "
                   "recurrent_lr_mult, weight_decay, warmup_steps, min_lr_ratio, grad_clip are "
                   "training options); repeatable")
    w.add_argument("--lrs", action="append", default=[], metavar="NAME=LR,LR,...",
                   help="LR grid of a model or variant (variants inherit their model's); defaults: "
                   + "; ".join(f"{m} {','.join(map(str, g))}" for m, g in DEFAULT_LRS.items()))
    w.add_argument("--stages", default="lr,seeds", help="comma-separated, in order: lr, seeds, throughput")
    w.add_argument("--rnn-block", default="hybrid", choices=[b for b in BLOCKS if b != "auto"],
                   help="block of the ParaRNN models (transformer and mamba2 use the standard one)")
    w.add_argument("--size", default="small", choices=list(SIZES))
    w.add_argument("--seq-len", type=_positive_int, default=512)
    w.add_argument("--batch-size", type=_positive_int, default=32)
    w.add_argument("--lr-steps", type=_positive_int, default=400, help="steps of each stage-1 run")
    w.add_argument("--final-steps", type=_positive_int, default=1600, help="steps of each stage-2 run")
    w.add_argument("--throughput-steps", type=_positive_int, default=100)
    w.add_argument("--seeds", default="0,1", help="initialisation seeds of stage 2")
    w.add_argument("--data", help="text file or folder, or python:packages (standard library and "
                   "site-packages) (default: python:stdlib, the Python standard library)")
    w.add_argument("--tokenizer", default="byte", choices=["byte", "bpe"])
    w.add_argument("--vocab-size", type=_positive_int, default=4096, help="BPE vocabulary size")
    w.add_argument("--eval-every", type=_positive_int, default=100)
    w.add_argument("--eval-tokens", type=_positive_int, default=262144)
    w.add_argument("--jobs", type=_positive_int, default=1, help="concurrent runs (stages lr and seeds)")
    w.add_argument("--keep-checkpoints", action="store_true", help="keep each run's final checkpoint")
    w.add_argument("--compile", action="store_true",
                   help="torch.compile every run (all models alike; recorded in sweep.json)")
    w.add_argument("--cuda-graph", action="store_true",
                   help="every run with `pararnn train --cuda-graph` (implies --compile; all models alike)")
    w.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop after this many seconds: runs in flight save a checkpoint at the step they "
                   "reached, and re-running the command continues them (default: no limit)")
    w.add_argument("--finish-within", type=float, metavar="SECONDS",
                   help="start a run only if it and the runs in flight are predicted to finish within "
                   "this many seconds (from H200 speeds at --size small; default: start every run)")
    w.add_argument("--tokens-per-s", action="append", default=[], metavar="MODEL=RATE,...",
                   help="measured tokens/s of one run of MODEL alone on this device at this --size "
                   "(e.g. from benchmarks/gpu_lm_speed.py): the time predictions use it instead "
                   "of the H200 speeds at small scaled by FLOPs; repeatable")
    w.add_argument("--dry-run", action="store_true", help="print the stage-1 runs and one command; run nothing")
    _add_runtime(w)
    _add_synthetic(sub)
    parser.commands = sub.choices
    return parser


def _model_options(text: str) -> dict:
    from .models.config import parse_model_options
    try:
        return parse_model_options(text)
    except (ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_synthetic(sub) -> None:
    from .synthetic.runner import RunConfig
    from .synthetic.tasks import TASKS
    d = RunConfig(task="parity", model="paragru")
    s = sub.add_parser("synthetic", help="state-tracking benchmarks: one-layer models on "
                       "parity, MQAR, k-hop, modular counting, S5 (ParaRNN paper, Table 1)")
    s.add_argument("--task", help=f"comma-separated, from {', '.join(TASKS)} (default: parity)")
    s.add_argument("--model", help=f"comma-separated, from {', '.join(MODELS)} (default: paragru)")
    s.add_argument("--all", action="store_true", help="every task with every model")
    s.add_argument("--out", help="write results.json and results.md into this folder (after every "
                   "run: an interrupted grid keeps the runs it finished)")
    s.add_argument("--steps", type=_positive_int, default=d.steps, help="training steps at most")
    s.add_argument("--time-limit", type=float, help="training seconds at most, per run")
    s.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    s.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (cosine schedule)")
    s.add_argument("--weight-decay", type=float, default=d.weight_decay)
    s.add_argument("--eval-every", type=_positive_int, default=d.eval_every)
    s.add_argument("--target", type=float, default=d.target, help="stop at this validation accuracy")
    s.add_argument("--length", type=_positive_int, default=d.length, help="training sequence length")
    s.add_argument("--n-train", type=_positive_int, default=d.n_train)
    s.add_argument("--n-val", type=_positive_int, default=d.n_val)
    s.add_argument("--n-test", type=_positive_int, default=d.n_test, help="test sequences at the training length")
    s.add_argument("--n-test-long", type=_positive_int, default=d.n_test_long,
                   help="test sequences at 2x and 4x the training length")
    s.add_argument("--eval-batch-size", type=_positive_int, default=d.eval_batch_size)
    s.add_argument("--width", type=_positive_int, default=d.width, help="model width and state size")
    s.add_argument("--heads", type=_positive_int, default=d.heads)
    s.add_argument("--block", default=d.block, choices=["auto", "paper", "bare"],
                   help="auto: the paper's choice (the bare cell for parity, modcount and s5, its "
                   "block otherwise); "
                   "paper: conv + gated norm + scaled residuals + recurrent clip 0.9; bare: none")
    s.add_argument("--seed", type=int, default=d.seed)
    s.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")


def _load_config(path: str) -> dict:
    """Option values from a JSON file, keyed by flag name (``max_steps`` or ``max-steps``)."""
    from .train.loop import TrainConfig
    try:
        loaded = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--config {path}: {err}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {path} must hold a JSON object")
    loaded = {k.replace("-", "_"): v for k, v in loaded.items()}
    unknown = set(loaded) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"--config {path}: unknown options {', '.join(sorted(unknown))}")
    return loaded


def cmd_train(args, parser) -> None:
    from .train.loop import TrainConfig, train
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {k: v for k, v in vars(args).items() if k in fields}
    if options.get("cuda_graph") and options.get("compile") is False:
        options["compile"] = True  # --cuda-graph replays the compiled step
    train(TrainConfig(**options))


def _open(args):
    import torch
    from .train.checkpoint import load_model, open_checkpoint
    from .train.distributed import pick_device
    from .train.loop import autocast_for
    device = pick_device(args.device)
    ckpt = open_checkpoint(args.checkpoint)
    model = load_model(ckpt, device)
    torch.manual_seed(getattr(args, "seed", 0))
    return ckpt, model, device, autocast_for(device, args.dtype)


def _eval_documents(args, ckpt) -> tuple[list[str], str]:
    """The documents ``pararnn eval`` scores and how to name them."""
    from .data import load_corpus
    from .data.corpus import is_named_corpus
    stored = ckpt.meta["train_config"]["data"]
    if args.data is None and not is_named_corpus(stored) and not Path(stored).exists():
        # runs trained before data paths were stored absolute may hold a relative one
        where = "" if Path(stored).is_absolute() else f" (relative to where training ran, not {os.getcwd()})"
        raise ValueError(f"the run was trained on --data {stored}{where}, which does not exist here; "
                         "pass --data PATH to say where that data is now")
    corpus = load_corpus(stored if args.data is None else args.data)
    split = args.split or ("held-out" if args.data is None else "all")
    if split == "held-out":
        return corpus.val, f"held-out split of {corpus.name}"
    return corpus.documents(), corpus.name


def cmd_eval(args, parser) -> None:
    from .data.batches import check_length
    from .train.checkpoint import load_model, open_checkpoint
    from .train.distributed import DistInfo, pick_device
    from .train.loop import autocast_for, evaluate
    device = pick_device(args.device)
    ckpt = open_checkpoint(args.checkpoint)
    tokenizer = ckpt.tokenizer()
    train_config = ckpt.meta["train_config"]
    seq_len = args.seq_len or train_config["seq_len"]
    docs, what = _eval_documents(args, ckpt)
    tokens = tokenizer.encode_documents(docs)
    check_length(tokens, seq_len, "evaluation")
    # the weights last: a bad --data or --seq-len is reported before a large model loads
    model, autocast = load_model(ckpt, device), autocast_for(device, args.dtype)
    budget = args.tokens or train_config["eval_tokens"]
    result = evaluate(model, tokens, tokenizer.token_bytes(), seq_len=seq_len,
                      batch_size=args.batch_size, max_windows=max(1, budget // seq_len),
                      device=device, autocast=autocast, info=DistInfo(device=device),
                      progress="eval" if args.progress else None)
    print(f"{ckpt.meta['model']} step {ckpt.meta['step']} on {what}: {result['val_tokens']:,} tokens "
          f"of {len(tokens):,}")
    print(f"loss {result['val_loss']:.4f} nats/token | perplexity {result['val_ppl']:.3f} | "
          f"{result['val_bpb']:.4f} bits/byte")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if min(values) < 1:
        raise ValueError(f"{flag} must be positive, got {text!r}")
    return values


def _add_compile_flag(parser) -> None:
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the decode step (default: on a GPU; compiling takes "
                        "seconds per model and batch size)")


def _generator(model, device, args):
    from .generation import Generator, decode_dtype
    return Generator(model, dtype=decode_dtype(device, args.dtype),
                     cuda_graph=args.cuda_graph and device.type == "cuda", compile=args.compile)


def cmd_generate(args, parser) -> None:
    import torch
    from .generation import SamplingConfig, synchronize
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    ckpt, model, device, _ = _open(args)
    tokenizer = ckpt.tokenizer()
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise ValueError("--prompt is empty")
    generator = _generator(model, device, args)
    rng = torch.Generator(device=device).manual_seed(args.seed)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    out, printed = [], ""
    stops = [tokenizer.eos_id] if args.stop_at_eos else []
    generator.reserve(1, len(ids) + args.max_new_tokens)  # buffers, capture, compilation: not timed
    tokens = generator.stream(torch.tensor([ids], device=device), args.max_new_tokens, sampling,
                              generator=rng, stop_tokens=stops)
    synchronize(device)
    start = time.perf_counter()
    first = next(tokens)  # the prefill and the first draw
    synchronize(device)
    prefill_s = time.perf_counter() - start
    decode_start = time.perf_counter()
    for token in itertools.chain([first], tokens):
        if int(token) in stops:
            break
        out.append(int(token))
        text = tokenizer.decode(out)
        if not text.endswith("\ufffd"):  # wait for a complete UTF-8 character
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
    synchronize(device)
    decode_s = time.perf_counter() - decode_start
    sys.stdout.write(tokenizer.decode(out)[len(printed):] + "\n")
    rate = f"{max(len(out) - 1, 0) / decode_s:.1f}" if decode_s > 0 else "n/a"
    print(f"[{ckpt.meta['model']}: prompt {len(ids)} tokens in {prefill_s * 1e3:.1f} ms; "
          f"{len(out)} new tokens at {rate} tokens/s "
          f"({'compiled, ' if generator.compiled else ''}{'CUDA graph' if generator.cuda_graph else 'eager'}); "
          f"decode state {generator.state_bytes() / 2**20:.3f} MiB]", file=sys.stderr)


def cmd_bench_decode(args, parser) -> None:
    import torch
    from .generation import benchmark_decode
    from .models import build_model, preset
    from .train.distributed import pick_device
    contexts = _int_list(args.contexts, "--contexts")
    batches = _int_list(args.batch_sizes, "--batch-sizes")
    if args.bandwidth <= 0:
        raise ValueError(f"--bandwidth must be positive, got {args.bandwidth}")
    if args.checkpoint:
        ckpt, model, device, _ = _open(args)
        models = [(ckpt.meta["model"], model)]
        size = ckpt.meta.get("train_config", {}).get("size")  # None: a checkpoint not from train
    else:
        device = pick_device(args.device)
        models = [(name, None) for name in _model_blocks(args.models, args.block)]
        size = args.size
    rows = []
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    meta = {"command": "pararnn " + " ".join(sys.argv[1:]), "device_name": device_name,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "bandwidth": args.bandwidth}
    print(f"{'model':<18}{'batch':>6}{'context':>9}{'tok/s':>12}{'bound tok/s':>13}{'of bound':>9}"
          f"{'step ms':>9}{'peak MiB':>10}{'state MiB':>11}  step")
    for name, model in models:
        if model is None:
            model_name, _, block = name.partition(":")
            torch.manual_seed(0)
            model = build_model(preset(model_name, args.size, block=block or args.block)).to(device).eval()
        generator = _generator(model, device, args)
        for batch in batches:
            for context in contexts:
                try:
                    row = benchmark_decode(generator, batch, context, args.new_tokens,
                                           bandwidth=args.bandwidth, prefill=args.prefill)
                except torch.cuda.OutOfMemoryError:
                    row = {"batch": batch, "context": context, "error": "out of memory"}
                generator.release()  # free the buffers (and graph) before the next shape
                rows.append({"model": name, "size": size, "device": str(device), **row})
                if args.json:  # after every row: a run cut short keeps what it measured
                    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.json).write_text(json.dumps(
                        {**meta, "loadavg": os.getloadavg(), "rows": rows}, indent=1))
                if "error" in row:
                    print(f"{name:<18}{batch:>6}{context:>9}  {row['error']}")
                    continue
                peak = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "n/a"
                step = ("compiled " if row["compiled"] else "") + ("graph" if row["cuda_graph"] else "eager")
                print(f"{name:<18}{batch:>6}{context:>9}{row['decode_tok_s']:>12.0f}"
                      f"{row['bound_tok_s']:>13.0f}{row['decode_tok_s'] / row['bound_tok_s']:>9.1%}"
                      f"{row['step_ms']:>9.3f}{peak:>10}{row['state_mib']:>11.2f}  {step}", flush=True)
        del model, generator


def cmd_export(args, parser) -> None:
    try:
        from .hf import export_checkpoint
    except ImportError as err:
        raise ValueError(f"export needs transformers (pip install 'pararnn[hf]'): {err}") from None
    out = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {out}: load it with `import pararnn.hf` and "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")


def cmd_sizes(args, parser) -> None:
    from .models import num_params, preset
    print(f"{'size':<8}{'d_model':>8}{'layers':>7}" + "".join(f"{m:>14}" for m in MODELS))
    for size, (d_model, n_layers) in SIZES.items():
        counts = [num_params(preset(model, size)) for model in MODELS]
        print(f"{size:<8}{d_model:>8}{n_layers:>7}" + "".join(f"{c / 1e6:>13.1f}M" for c in counts))
    print("(byte-level vocabulary; a BPE vocabulary adds vocab x d_model embedding parameters)")


def cmd_compare(args, parser) -> None:
    from .train.metrics import plot_comparison, summarize
    if len(args.runs) == 1 and (Path(args.runs[0]) / "sweep.json").exists():
        from .train.sweep import summary_markdown, write_report
        print(summary_markdown(write_report(Path(args.runs[0]))))
        return
    rows = [summarize(Path(run)) for run in args.runs]
    print("| run | model | params | steps | tokens | val loss | val bits/byte | train tokens/s | MFU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        params = f"{r['params'] / 1e6:.1f}M" if r["params"] else "?"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"| {r['run']} | {r['model']} | {params} | {r['steps']} | {r['tokens']:,} | "
              f"{r['val_loss']:.4f} | {r['val_bpb']:.4f} | {r['tok_per_s']:,.0f} | {mfu} |")
    if args.plot:
        plot_comparison([Path(run) for run in args.runs], Path(args.plot), args.title)


def cmd_sweep(args, parser) -> None:
    from .train.sweep import SweepConfig, parse_rates, parse_sweep_lists, sweep
    lists = parse_sweep_lists(models=args.models, variants=args.variant, lr_grids=args.lrs,
                              stages=args.stages, seeds=args.seeds, rnn_block=args.rnn_block)
    cfg = SweepConfig(out=args.out, **lists, size=args.size, seq_len=args.seq_len,
                      batch_size=args.batch_size, lr_steps=args.lr_steps, final_steps=args.final_steps,
                      throughput_steps=args.throughput_steps, data=args.data, tokenizer=args.tokenizer,
                      vocab_size=args.vocab_size, eval_every=args.eval_every, eval_tokens=args.eval_tokens,
                      jobs=args.jobs, device=args.device, dtype=args.dtype, compile=args.compile,
                      cuda_graph=args.cuda_graph,
                      keep_checkpoints=args.keep_checkpoints, time_limit=args.time_limit,
                      finish_within=args.finish_within,
                      measured_tokens_per_s=parse_rates(args.tokens_per_s))
    if args.dry_run:
        from .train.sweep import estimate, plan, train_command
        runs = plan(cfg, "lr")
        for run in runs:
            print(run.folder(Path(cfg.out)))
        print(f"{len(runs)} stage-lr runs, {args.jobs} at a time; e.g.\n"
              + " ".join(train_command(cfg, runs[0], runs[0].folder(Path(cfg.out)))))
        rows = estimate(cfg)
        for row in rows:
            print(f"stage {row['stage']}: {row['left']} of {row['runs']} runs to go, "
                  f"{row['tokens_per_run']:,} tokens each, ~{row['device_s']:.0f} device-seconds")
        speeds = ("measured speeds (--tokens-per-s) where given, else " if cfg.measured_tokens_per_s
                  else "")
        print(f"estimate: {sum(r['device_s'] for r in rows):.0f} device-seconds left "
              f"({speeds}H200 speeds at --size small, scaled to other sizes by FLOPs; runs "
              "sharing the device split it, with a small gain)")
        return
    import signal

    def stop(signum, frame):  # `timeout` sends SIGTERM: stop the runs in flight, keep the finished
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        failed = sweep(cfg, say=lambda *a: print(*a, flush=True), command=shlex.join(["pararnn", *args.argv]))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"report: {Path(args.out) / 'summary.md'}")
    if failed:
        raise ValueError(f"{len(failed)} run(s) failed, e.g. {failed[0]} (see its train.log); "
                         "re-run the same command to retry them")


def _model_blocks(text: str, default_block: str) -> list[str]:
    """The ``--models`` entries, checked: ``MODEL``, or ``MODEL:BLOCK`` where the block is
    not ``default_block`` (then written as plain ``MODEL``, the name its rows get)."""
    entries = []
    for item in (item.strip() for item in text.split(",") if item.strip()):
        model, _, block = item.partition(":")
        if model not in MODELS or (block and block not in BLOCKS):
            raise ValueError(f"--models entries must be MODEL or MODEL:BLOCK with a model from "
                             f"{', '.join(MODELS)} and a block from {', '.join(BLOCKS)}, got {item!r}")
        entries.append(model if block in ("", default_block) else item)
    if not entries:
        raise ValueError(f"--models must name at least one model, got {text!r}")
    return entries


def _choices(text: str, known, what: str) -> list[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown or not chosen:
        raise ValueError(f"--{what} must be comma-separated names from {', '.join(known)}, got {text!r}")
    return chosen


def _synthetic_command(args, tasks: list[str], models: list[str]) -> str:
    """The ``pararnn synthetic`` command with every option's value, defaults included (a
    later version's defaults may differ), quoted for the shell: running it again repeats
    the grid."""
    values = {**vars(args), "task": None if args.all else ",".join(tasks),
              "model": None if args.all else ",".join(models)}
    words = ["pararnn", "synthetic"]
    for name, value in values.items():
        if name in ("command", "argv") or value is None or value is False:
            continue
        words.append("--" + name.replace("_", "-"))
        if value is not True:
            words.append(str(value))
    return shlex.join(words)


def cmd_synthetic(args, parser) -> None:
    from .synthetic.models import PAPER_SETUP
    from .synthetic.report import markdown_table, write_outputs
    from .synthetic.runner import RunConfig, run
    from .synthetic.tasks import TASKS
    from .train.distributed import pick_device
    if args.all and (args.task or args.model):
        raise ValueError("--all runs every task with every model: leave out --task and --model")
    tasks = list(TASKS) if args.all else _choices(args.task or "parity", TASKS, "task")
    models = list(MODELS) if args.all else _choices(args.model or "paragru", MODELS, "model")
    device = str(pick_device(args.device))
    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"task", "model", "device"}
    options = {k: v for k, v in vars(args).items() if k in fields}
    # every run's options checked before the first one trains
    configs = [RunConfig(task=task, model=model, device=device, **options)
               for task in tasks for model in models]
    command = _synthetic_command(args, tasks, models)
    print(PAPER_SETUP)
    results = []
    for cfg in configs:
        result = run(cfg)
        print(f"{cfg.task}/{cfg.model}: {result['params']:,} parameters, {result['steps']} steps, "
              f"test accuracy {100 * result['test_acc']:.1f}%")
        results.append(result)
        if args.out:
            paths = write_outputs(results, Path(args.out), command, device)
    print(markdown_table(results))
    if args.out:
        print(f"wrote {paths[0]} and {paths[1]}")


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate,
            "bench-decode": cmd_bench_decode, "export": cmd_export, "sizes": cmd_sizes,
            "compare": cmd_compare, "sweep": cmd_sweep, "synthetic": cmd_synthetic}


def _one_line_checkpoint_warnings(show):
    """``warnings.showwarning`` that prints a :class:`CheckpointWarning` (a damaged checkpoint
    skipped) as one line for the command's user, and leaves other warnings to ``show``."""
    from .train.checkpoint import CheckpointWarning

    def show_warning(message, category, *args, **kwargs):
        if issubclass(category, CheckpointWarning):
            print(f"pararnn: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)
    return show_warning


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by `pararnn sweep`
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_checkpoint_warnings(warnings.showwarning)
        return _run(parser, args, argv)


def _run(parser, args, argv) -> int:
    try:
        if args.command == "train" and args.config:
            # the file's values become defaults, so flags on the command line still win
            parser.commands["train"].set_defaults(**_load_config(args.config))
            args = parser.parse_args(argv)
        COMMANDS[args.command](args, parser)
    except KeyboardInterrupt as err:
        why = f": {err}" if str(err) else ""  # e.g. a training run stopped by SIGTERM
        print(f"pararnn: interrupted{why} (a training run continues from its last checkpoint with --resume)",
              file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, FloatingPointError) as err:
        if os.environ.get("PARARNN_TRACEBACK"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"pararnn: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
