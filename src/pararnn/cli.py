"""The ``pararnn`` command: train, evaluate and sample language models.

    pararnn train --model paragru --size tiny --out runs/tiny --max-steps 300
    pararnn eval --checkpoint runs/tiny
    pararnn generate --checkpoint runs/tiny --prompt "def " --max-new-tokens 200
    pararnn bench-decode --model paragru --size small --contexts 512,2048,8192
    pararnn sizes
    pararnn compare runs/a runs/b --plot compare.png
    pararnn sweep --out results/lm_quality --size small --jobs 6
    pararnn compare results/lm_quality

Bad input (missing or corrupt checkpoint, empty data, unknown model, ...) ends with one
line ``pararnn: error: ...`` and exit status 2; set ``PARARNN_TRACEBACK=1`` to see the
traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

from .models.config import MODELS, SIZES


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

    from .train.loop import TrainConfig
    d = TrainConfig()
    # every train/eval flag has a help text, and its default is shown after it
    t = sub.add_parser("train", help="train a language model (also under torchrun)",
                       formatter_class=_DefaultsFormatter)
    t.add_argument("--config", help="JSON file of option values (flag names, '_' or '-'); "
                   "flags on the command line override it (default: none)")
    t.add_argument("--model", default=d.model, help=f"one of {', '.join(MODELS)}")
    t.add_argument("--size", default=d.size, help=f"one of {', '.join(SIZES)} (see `pararnn sizes`)")
    t.add_argument("--block", default=d.block, choices=["standard", "paper"],
                   help="paper: causal conv + gated RMSNorm + scaled residuals (ParaRNN paper)")
    t.add_argument("--model-options", type=_model_options, default={}, metavar="KEY=VALUE,...",
                   help="ModelConfig overrides, e.g. rnn_expand=2,rnn_init=paper")
    t.add_argument("--data", default=d.data, help="text file or directory of text files "
                   "(default: the Python standard library's source, no download)")
    t.add_argument("--out", default=d.out, help="run folder: checkpoints, metrics.jsonl, loss.png")
    t.add_argument("--tokenizer", default=d.tokenizer, choices=["byte", "bpe"],
                   help="byte: the 256 byte values; bpe: trained on the training split, saved in the run")
    t.add_argument("--vocab-size", type=_positive_int, default=d.vocab_size,
                   help="BPE vocabulary size (--tokenizer bpe only)")
    t.add_argument("--tokenizer-from", default=d.tokenizer_from, metavar="DIR",
                   help="reuse the tokenizer.json in DIR (e.g. another run) instead of training a BPE")
    t.add_argument("--max-steps", type=int, default=d.max_steps,
                   help="optimizer steps to train; also the length of the LR schedule")
    t.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per training sequence")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per process and micro-step")
    t.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-steps per optimizer step")
    t.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
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
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
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
    _add_runtime(g)

    b = sub.add_parser("bench-decode", help="decode speed and memory against the context length")
    b.add_argument("--checkpoint", help="a checkpoint; or give --model and --size (random weights)")
    b.add_argument("--model", choices=MODELS, default="paragru")
    b.add_argument("--size", choices=list(SIZES), default="tiny")
    b.add_argument("--contexts", default="256,1024,4096", help="comma-separated prompt lengths")
    b.add_argument("--new-tokens", type=_positive_int, default=64)
    b.add_argument("--batch-size", type=_positive_int, default=1)
    b.add_argument("--json", help="also write the rows to this JSON file")
    _add_runtime(b)

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
                   "paragru+expand2=rnn_expand=2 (block=standard|paper picks the block; schedule, "
                   "recurrent_lr_mult, weight_decay, warmup_steps, min_lr_ratio, grad_clip are "
                   "training options); repeatable")
    w.add_argument("--lrs", action="append", default=[], metavar="NAME=LR,LR,...",
                   help="LR grid of a model or variant (variants inherit their model's); defaults: "
                   + "; ".join(f"{m} {','.join(map(str, g))}" for m, g in DEFAULT_LRS.items()))
    w.add_argument("--stages", default="lr,seeds", help="comma-separated, in order: lr, seeds, throughput")
    w.add_argument("--rnn-block", default="paper", choices=["standard", "paper"],
                   help="block of the ParaRNN models (transformer and mamba2 use the standard one)")
    w.add_argument("--size", default="small", choices=list(SIZES))
    w.add_argument("--seq-len", type=_positive_int, default=512)
    w.add_argument("--batch-size", type=_positive_int, default=32)
    w.add_argument("--lr-steps", type=_positive_int, default=400, help="steps of each stage-1 run")
    w.add_argument("--final-steps", type=_positive_int, default=1600, help="steps of each stage-2 run")
    w.add_argument("--throughput-steps", type=_positive_int, default=100)
    w.add_argument("--seeds", default="0,1", help="initialisation seeds of stage 2")
    w.add_argument("--data", help="text file or folder (default: the Python standard library)")
    w.add_argument("--tokenizer", default="byte", choices=["byte", "bpe"])
    w.add_argument("--vocab-size", type=_positive_int, default=4096, help="BPE vocabulary size")
    w.add_argument("--eval-every", type=_positive_int, default=100)
    w.add_argument("--eval-tokens", type=_positive_int, default=262144)
    w.add_argument("--jobs", type=_positive_int, default=1, help="concurrent runs (stages lr and seeds)")
    w.add_argument("--keep-checkpoints", action="store_true", help="keep each run's final checkpoint")
    w.add_argument("--dry-run", action="store_true", help="print the stage-1 runs and one command; run nothing")
    _add_runtime(w)
    parser.commands = sub.choices
    return parser


def _model_options(text: str) -> dict:
    from .models.config import parse_model_options
    try:
        return parse_model_options(text)
    except (ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    train(TrainConfig(**{k: v for k, v in vars(args).items() if k in fields}))


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
    stored = ckpt.meta["train_config"]["data"]
    if args.data is None and stored is not None and not Path(stored).exists():
        # runs trained before data paths were stored absolute may hold a relative one
        where = "" if Path(stored).is_absolute() else f" (relative to where training ran, not {os.getcwd()})"
        raise ValueError(f"the run was trained on --data {stored}{where}, which does not exist here; "
                         "pass --data PATH to say where that data is now")
    corpus = load_corpus(stored if args.data is None else args.data)
    split = args.split or ("held-out" if args.data is None else "all")
    if split == "held-out":
        return corpus.val, f"held-out split of {corpus.name}"
    return corpus.train + corpus.val, corpus.name


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


def _cache_bytes(caches) -> int:
    """Bytes that decode caches keep alive (states, conv windows, KV buffers), counted by
    storage, so that a small view pinning a large tensor counts in full."""
    from .models.blocks import cache_tensors
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache_tensors(caches)}
    return sum(storages.values())


def cmd_generate(args, parser) -> None:
    import torch
    from .models import sample
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    ckpt, model, device, autocast = _open(args)
    tokenizer = ckpt.tokenizer()
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise ValueError("--prompt is empty")
    idx = torch.tensor([ids], device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    out, caches = [], model.new_caches()
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad(), autocast:
        logits = model(idx, caches=caches, last_only=True)[:, -1]
        _sync(device)
        prefill_s = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        decode_start = time.perf_counter()
        printed = ""
        for i in range(args.max_new_tokens):
            token = sample(logits, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, generator=generator)
            out.append(int(token))
            text = tokenizer.decode(out)
            if not text.endswith("\ufffd"):  # wait for a complete UTF-8 character
                sys.stdout.write(text[len(printed):])
                sys.stdout.flush()
                printed = text
            if i + 1 < args.max_new_tokens:
                logits = model(token[:, None], caches=caches)[:, -1]
        _sync(device)
    decode_s = time.perf_counter() - decode_start
    sys.stdout.write(tokenizer.decode(out)[len(printed):] + "\n")
    peak = (f"peak GPU memory while decoding {torch.cuda.max_memory_allocated(device) / 2**20:.1f} MiB, "
            if device.type == "cuda" else "")
    print(f"[{ckpt.meta['model']}: prompt {len(ids)} tokens in {prefill_s * 1e3:.1f} ms; "
          f"{len(out)} new tokens at {len(out) / decode_s:.1f} tokens/s; {peak}"
          f"decode state {_cache_bytes(caches) / 2**20:.3f} MiB]", file=sys.stderr)


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cmd_bench_decode(args, parser) -> None:
    import torch
    from .models import build_model, preset
    from .train.distributed import pick_device
    from .train.loop import autocast_for
    try:
        contexts = [int(c) for c in args.contexts.split(",")]
    except ValueError:
        raise ValueError(f"--contexts must be comma-separated integers, got {args.contexts!r}") from None
    if not contexts or min(contexts) < 1:
        raise ValueError(f"--contexts must be positive, got {args.contexts!r}")
    if args.checkpoint:
        ckpt, model, device, autocast = _open(args)
        name = ckpt.meta["model"]
    else:
        device = pick_device(args.device)
        model = build_model(preset(args.model, args.size)).to(device).eval()
        autocast, name = autocast_for(device, args.dtype), args.model
    rows = []
    print(f"{'model':<12}{'context':>9}{'prefill ms':>12}{'decode tok/s':>14}{'peak MiB':>10}{'state MiB':>11}")
    for context in contexts:
        idx = torch.randint(0, model.cfg.vocab_size, (args.batch_size, context), device=device)
        caches = model.new_caches()
        with torch.no_grad(), autocast:
            _sync(device)
            t0 = time.perf_counter()
            logits = model(idx, caches=caches, last_only=True)[:, -1]
            _sync(device)
            t1 = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.new_tokens):
                logits = model(logits.argmax(-1)[:, None], caches=caches)[:, -1]
            _sync(device)
            t2 = time.perf_counter()
        row = {"model": name, "context": context, "prefill_ms": (t1 - t0) * 1e3,
               "decode_tok_s": args.new_tokens * args.batch_size / (t2 - t1),
               "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
               "state_mib": _cache_bytes(caches) / 2**20}
        rows.append(row)
        peak = f"{row['peak_mib']:.1f}" if row["peak_mib"] is not None else "n/a"
        print(f"{name:<12}{context:>9}{row['prefill_ms']:>12.1f}{row['decode_tok_s']:>14.1f}"
              f"{peak:>10}{row['state_mib']:>11.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def cmd_sizes(args, parser) -> None:
    import torch
    from .models import build_model, preset
    print(f"{'size':<8}{'d_model':>8}{'layers':>7}" + "".join(f"{m:>14}" for m in MODELS))
    for size, (d_model, n_layers) in SIZES.items():
        counts = []
        for model in MODELS:
            with torch.device("meta"):
                counts.append(build_model(preset(model, size)).num_params())
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
    from .train.sweep import SweepConfig, parse_sweep_lists, sweep
    lists = parse_sweep_lists(models=args.models, variants=args.variant, lr_grids=args.lrs,
                              stages=args.stages, seeds=args.seeds, rnn_block=args.rnn_block)
    cfg = SweepConfig(out=args.out, **lists, size=args.size, seq_len=args.seq_len,
                      batch_size=args.batch_size, lr_steps=args.lr_steps, final_steps=args.final_steps,
                      throughput_steps=args.throughput_steps, data=args.data, tokenizer=args.tokenizer,
                      vocab_size=args.vocab_size, eval_every=args.eval_every, eval_tokens=args.eval_tokens,
                      jobs=args.jobs, device=args.device, dtype=args.dtype,
                      keep_checkpoints=args.keep_checkpoints)
    if args.dry_run:
        from .train.sweep import plan, train_command
        runs = plan(cfg, "lr")
        for run in runs:
            print(run.folder(Path(cfg.out)))
        print(f"{len(runs)} stage-lr runs, {args.jobs} at a time; e.g.\n"
              + " ".join(train_command(cfg, runs[0], runs[0].folder(Path(cfg.out)))))
        return
    import signal

    def stop(signum, frame):  # `timeout` sends SIGTERM: stop the runs in flight, keep the finished
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    failed = sweep(cfg, say=lambda *a: print(*a, flush=True), command=shlex.join(["pararnn", *args.argv]))
    print(f"report: {Path(args.out) / 'summary.md'}")
    if failed:
        raise ValueError(f"{len(failed)} run(s) failed, e.g. {failed[0]} (see its train.log); "
                         "re-run the same command to retry them")


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate,
            "bench-decode": cmd_bench_decode, "sizes": cmd_sizes, "compare": cmd_compare,
            "sweep": cmd_sweep}


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
    except KeyboardInterrupt:
        print("pararnn: interrupted (a training run continues from its last checkpoint with --resume)",
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
