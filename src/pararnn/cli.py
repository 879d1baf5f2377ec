"""The ``pararnn`` command: train, evaluate and sample language models.

    pararnn train --model paragru --size tiny --out runs/tiny --max-steps 300
    pararnn eval --checkpoint runs/tiny
    pararnn generate --checkpoint runs/tiny --prompt "def " --max-new-tokens 200
    pararnn bench-decode --model paragru --size small --contexts 512,2048,8192
    pararnn sizes
    pararnn compare runs/a runs/b --plot compare.png
    pararnn synthetic --task parity --model paragru --out runs/synthetic

Bad input (missing or corrupt checkpoint, empty data, unknown model, ...) ends with one
line ``pararnn: error: ...`` and exit status 2; set ``PARARNN_TRACEBACK=1`` to see the
traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from .models.config import MODELS, SIZES


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bf16 autocast on GPU, float32 on CPU")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pararnn", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    from .train.loop import TrainConfig
    d = TrainConfig()
    t = sub.add_parser("train", help="train a language model (also under torchrun)")
    t.add_argument("--config", help="JSON file of option values (flag names, '_' or '-'); "
                   "flags on the command line override it")
    t.add_argument("--model", default=d.model, help=f"one of {', '.join(MODELS)}")
    t.add_argument("--size", default=d.size, help=f"one of {', '.join(SIZES)} (see `pararnn sizes`)")
    t.add_argument("--block", default=d.block, choices=["standard", "paper"],
                   help="paper: causal conv + gated RMSNorm + scaled residuals (ParaRNN paper)")
    t.add_argument("--data", default=d.data, help="text file or directory of text files "
                   "(default: the Python standard library's source, no download)")
    t.add_argument("--out", default=d.out, help="run folder: checkpoints, metrics.jsonl, loss.png")
    t.add_argument("--tokenizer", default=d.tokenizer, choices=["byte", "bpe"])
    t.add_argument("--vocab-size", type=_positive_int, default=d.vocab_size, help="BPE vocabulary size")
    t.add_argument("--max-steps", type=int, default=d.max_steps, help="length of the LR schedule")
    t.add_argument("--seq-len", type=int, default=d.seq_len)
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per process and micro-step")
    t.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-steps per optimizer step")
    t.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    t.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="final LR / peak LR")
    t.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="default: 5%% of --max-steps")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--grad-clip", type=float, default=d.grad_clip)
    t.add_argument("--eval-every", type=int, default=d.eval_every)
    t.add_argument("--eval-tokens", type=int, default=d.eval_tokens, help="held-out tokens per validation")
    t.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    t.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    t.add_argument("--log-every", type=int, default=d.log_every)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (under torchrun)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _add_runtime(t)

    e = sub.add_parser("eval", help="validation loss, perplexity and bits per byte of a checkpoint")
    e.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    e.add_argument("--data", help="text file or folder to score whole (default: the training "
                   "data's held-out split)")
    e.add_argument("--seq-len", type=_positive_int, help="default: the training --seq-len")
    e.add_argument("--batch-size", type=_positive_int, default=8)
    e.add_argument("--max-tokens", type=_positive_int, default=1_000_000, help="score at most this many tokens")
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

    c = sub.add_parser("compare", help="table and validation-curve plot of several runs")
    c.add_argument("runs", nargs="+", help="run folders")
    c.add_argument("--plot", help="write the validation curves to this PNG")
    c.add_argument("--title", default="")
    _add_synthetic(sub)
    parser.commands = sub.choices
    return parser


def _add_synthetic(sub) -> None:
    from .synthetic.runner import RunConfig
    from .synthetic.tasks import TASKS
    d = RunConfig(task="parity", model="paragru")
    s = sub.add_parser("synthetic", help="state-tracking benchmarks: one-layer models on "
                       "parity, MQAR, k-hop, modular counting, S5 (ParaRNN paper, Table 1)")
    s.add_argument("--task", default="parity", help=f"comma-separated, from {', '.join(TASKS)}")
    s.add_argument("--model", default="paragru", help=f"comma-separated, from {', '.join(MODELS)}")
    s.add_argument("--all", action="store_true", help="every task with every model")
    s.add_argument("--out", help="write results.json and results.md into this folder")
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
                   help="auto: the paper's choice (the bare cell for parity, its block otherwise); "
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


def cmd_eval(args, parser) -> None:
    from .data import load_corpus
    from .data.batches import check_length
    from .train.distributed import DistInfo
    from .train.loop import evaluate
    ckpt, model, device, autocast = _open(args)
    tokenizer = ckpt.tokenizer()
    seq_len = args.seq_len or ckpt.meta["train_config"]["seq_len"]
    if args.data is None:
        corpus = load_corpus(ckpt.meta["train_config"]["data"])
        docs, what = corpus.val, f"held-out split of {corpus.name}"
    else:
        corpus = load_corpus(args.data)
        docs, what = corpus.train + corpus.val, corpus.name
    tokens = tokenizer.encode_documents(docs)
    check_length(tokens, seq_len, "evaluation")
    result = evaluate(model, tokens, tokenizer.token_bytes(), seq_len=seq_len,
                      batch_size=args.batch_size, max_windows=max(1, args.max_tokens // seq_len),
                      device=device, autocast=autocast, info=DistInfo(device=device))
    print(f"{ckpt.meta['model']} step {ckpt.meta['step']} on {what}: {result['val_tokens']:,} tokens")
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
    rows = [summarize(Path(run)) for run in args.runs]
    print("| run | model | params | steps | tokens | val loss | val bits/byte | train tokens/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        params = f"{r['params'] / 1e6:.1f}M" if r["params"] else "?"
        print(f"| {r['run']} | {r['model']} | {params} | {r['steps']} | {r['tokens']:,} | "
              f"{r['val_loss']:.4f} | {r['val_bpb']:.4f} | {r['tok_per_s']:,.0f} |")
    if args.plot:
        plot_comparison([Path(run) for run in args.runs], Path(args.plot), args.title)


def _choices(text: str, known, what: str) -> list[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown or not chosen:
        raise ValueError(f"--{what} must be comma-separated names from {', '.join(known)}, got {text!r}")
    return chosen


def cmd_synthetic(args, parser) -> None:
    from .synthetic.models import PAPER_SETUP
    from .synthetic.report import markdown_table, write_outputs
    from .synthetic.runner import RunConfig, run
    from .synthetic.tasks import TASKS
    from .train.distributed import pick_device
    tasks = list(TASKS) if args.all else _choices(args.task, TASKS, "task")
    models = list(MODELS) if args.all else _choices(args.model, MODELS, "model")
    device = str(pick_device(args.device))
    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"task", "model", "device"}
    options = {k: v for k, v in vars(args).items() if k in fields}
    print(PAPER_SETUP)
    results = []
    for task in tasks:
        for model in models:
            result = run(RunConfig(task=task, model=model, device=device, **options))
            print(f"{task}/{model}: {result['params']:,} parameters, {result['steps']} steps, "
                  f"test accuracy {100 * result['test_acc']:.1f}%")
            results.append(result)
    print(markdown_table(results))
    if args.out:
        flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                 for k, v in vars(args).items() if k != "command" and v is not None and v is not False]
        command = " ".join(["pararnn synthetic", *flags])
        paths = write_outputs(results, Path(args.out), command, device)
        print(f"wrote {paths[0]} and {paths[1]}")


COMMANDS = {"synthetic": cmd_synthetic, "train": cmd_train, "eval": cmd_eval, "generate": cmd_generate,
            "bench-decode": cmd_bench_decode, "sizes": cmd_sizes, "compare": cmd_compare}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
