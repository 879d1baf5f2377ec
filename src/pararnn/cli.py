"""The ``pararnn`` command: train, evaluate and sample language models.

    pararnn train --model paragru --size tiny --out runs/tiny --max-steps 300
    pararnn eval --checkpoint runs/tiny
    pararnn generate --checkpoint runs/tiny --prompt "def " --max-new-tokens 200
    pararnn bench-decode --models paragru,transformer --size small --batch-sizes 1,16,256
    pararnn export --checkpoint runs/tiny --out hf/tiny
    pararnn sizes
    pararnn compare runs/a runs/b --plot compare.png

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
    g.add_argument("--stop-at-eos", action="store_true", help="stop at the end-of-text token")
    g.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                   help="decode step by step in eager mode on a GPU too")
    _add_runtime(g)

    b = sub.add_parser("bench-decode", help="decode speed and memory against batch size and context")
    b.add_argument("--checkpoint", help="a checkpoint; or give --models and --size (random weights)")
    b.add_argument("--models", "--model", default="paragru,transformer",
                   help=f"comma-separated, from {', '.join(MODELS)}")
    b.add_argument("--size", choices=list(SIZES), default="tiny")
    b.add_argument("--contexts", default="512,8192,32768", help="comma-separated context lengths")
    b.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,4,16,64,256")
    b.add_argument("--new-tokens", type=_positive_int, default=64, help="timed decode steps")
    b.add_argument("--prefill", choices=["synthetic", "real"], default="synthetic",
                   help="real: run a random prompt of each context length; synthetic: random "
                   "decode state (same step cost, no prefill time)")
    b.add_argument("--bandwidth", type=float, default=4.25e12,
                   help="memory bandwidth in bytes/s for the bound (default: measured on an H200)")
    b.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false")
    b.add_argument("--json", help="also write the rows to this JSON file")
    _add_runtime(b)

    x = sub.add_parser("export", help="write a checkpoint as a Hugging Face model folder (needs pararnn[hf])")
    x.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    x.add_argument("--out", required=True, help="folder for config.json, model.safetensors, tokenizer")

    sub.add_parser("sizes", help="parameter counts of every model at every size")

    c = sub.add_parser("compare", help="table and validation-curve plot of several runs")
    c.add_argument("runs", nargs="+", help="run folders")
    c.add_argument("--plot", help="write the validation curves to this PNG")
    c.add_argument("--title", default="")
    parser.commands = sub.choices
    return parser


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


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if min(values) < 1:
        raise ValueError(f"{flag} must be positive, got {text!r}")
    return values


def _generator(model, device, args):
    from .generation import Generator, decode_dtype
    return Generator(model, dtype=decode_dtype(device, args.dtype),
                     cuda_graph=args.cuda_graph and device.type == "cuda")


def cmd_generate(args, parser) -> None:
    import torch
    from .generation import SamplingConfig
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
    generator.reserve(1, len(ids) + args.max_new_tokens)  # buffers and graph capture: not timed
    tokens = generator.stream(torch.tensor([ids], device=device), args.max_new_tokens, sampling,
                              generator=rng, stop_tokens=stops)
    _sync(device)
    start = time.perf_counter()
    first = next(tokens)  # the prefill and the first draw
    _sync(device)
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
    _sync(device)
    decode_s = time.perf_counter() - decode_start
    sys.stdout.write(tokenizer.decode(out)[len(printed):] + "\n")
    rate = f"{max(len(out) - 1, 0) / decode_s:.1f}" if decode_s > 0 else "n/a"
    print(f"[{ckpt.meta['model']}: prompt {len(ids)} tokens in {prefill_s * 1e3:.1f} ms; "
          f"{len(out)} new tokens at {rate} tokens/s "
          f"({'CUDA graph' if generator.cuda_graph else 'eager'}); "
          f"decode state {generator.state_bytes() / 2**20:.3f} MiB]", file=sys.stderr)


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    else:
        names = [m for m in args.models.split(",") if m]
        unknown = [m for m in names if m not in MODELS]
        if unknown or not names:
            raise ValueError(f"--models must name models from {', '.join(MODELS)}, got {args.models!r}")
        device = pick_device(args.device)
        models = [(name, None) for name in names]
    rows = []
    print(f"{'model':<12}{'batch':>6}{'context':>9}{'tok/s':>12}{'bound tok/s':>13}{'of bound':>9}"
          f"{'step ms':>9}{'peak MiB':>10}{'state MiB':>11}")
    for name, model in models:
        if model is None:
            torch.manual_seed(0)
            model = build_model(preset(name, args.size)).to(device).eval()
        generator = _generator(model, device, args)
        for batch in batches:
            for context in contexts:
                try:
                    row = benchmark_decode(generator, batch, context, args.new_tokens,
                                           bandwidth=args.bandwidth, prefill=args.prefill)
                except torch.cuda.OutOfMemoryError:
                    row = {"batch": batch, "context": context, "error": "out of memory"}
                generator.release()  # free the buffers (and graph) before the next shape
                rows.append({"model": name, "size": args.size, "device": str(device), **row})
                if "error" in row:
                    print(f"{name:<12}{batch:>6}{context:>9}  {row['error']}")
                    continue
                peak = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "n/a"
                print(f"{name:<12}{batch:>6}{context:>9}{row['decode_tok_s']:>12.0f}"
                      f"{row['bound_tok_s']:>13.0f}{row['decode_tok_s'] / row['bound_tok_s']:>9.1%}"
                      f"{row['step_ms']:>9.3f}{peak:>10}{row['state_mib']:>11.2f}", flush=True)
        del model, generator
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        meta = {"command": "pararnn " + " ".join(sys.argv[1:]), "device_name": device_name,
                "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "loadavg": os.getloadavg(), "bandwidth": args.bandwidth}
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=1))


def cmd_export(args, parser) -> None:
    try:
        from .hf import export_checkpoint
    except ImportError as err:
        raise ValueError(f"export needs transformers (pip install 'pararnn[hf]'): {err}") from None
    out = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {out}: load it with `import pararnn.hf` and "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")


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


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate,
            "bench-decode": cmd_bench_decode, "export": cmd_export, "sizes": cmd_sizes, "compare": cmd_compare}


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
