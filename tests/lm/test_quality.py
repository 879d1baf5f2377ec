"""The comparison protocol: weight-decay rule, LR schedules, data vs init seed, FLOPs
count, model options on the command line, and a tiny `pararnn sweep` end to end on CPU."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import pararnn.train.loop as loop
from pararnn.cli import main
from pararnn.models import build_model, preset
from pararnn.models.config import parse_model_options
from pararnn.models.flops import forward_flops_per_token
from pararnn.train import TrainConfig, train
from pararnn.train.metrics import read_metrics
from pararnn.train.schedules import wsd_lr
from pararnn.train.sweep import parse_entry
from source_corpus import write_source_corpus


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return write_source_corpus(tmp_path_factory.mktemp("corpus"), files=40, chars=1500)


@pytest.mark.parametrize("model,block", [("paragru", "paper"), ("paralstm", "standard"),
                                         ("transformer", "paper"), ("mamba2", "standard")])
def test_weight_decay_only_on_linear_matrices(model, block):
    lm = build_model(preset(model, "nano", block=block, vocab_size=64))
    groups = loop.optimizer_groups(lm, lr=1e-3, weight_decay=0.1, recurrent_lr_mult=0.5)
    decayed, exempt = groups[:2]
    assert decayed["weight_decay"] == 0.1 and all(g["weight_decay"] == 0.0 for g in groups[1:])
    names = {id(p): n for n, p in lm.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    exempt_names = {names[id(p)] for g in groups[1:] for p in g["params"]}
    if model.startswith("para"):  # the recurrent vectors learn at lr x recurrent_lr_mult
        assert groups[2]["lr"] == 5e-4 and decayed["lr"] == exempt["lr"] == 1e-3
        assert {names[id(p)].rsplit(".", 1)[-1] for p in groups[2]["params"]} == (
            {"a", "peephole"} if model == "paralstm" else {"a"})
    else:
        assert len(groups) == 2
    assert len(decayed_names) + len(exempt_names) == len(names)
    assert "embed.weight" in exempt_names
    for name in exempt_names - {"embed.weight"}:
        leaf = name.rsplit(".", 1)[-1]
        assert leaf in ("weight", "bias", "a", "peephole", "scale1", "scale2", "A_log", "dt_bias", "D"), name
        assert leaf != "weight" or any(k in name for k in ("norm", "conv")), name
    assert all(n.endswith("weight") and "norm" not in n and "conv" not in n for n in decayed_names)
    if model.startswith("para"):
        assert any("rnn.projection.weight" in n for n in decayed_names)
        assert any(n.endswith("cell.a") for n in exempt_names)


def test_training_optimizer_is_fused_on_cpu_and_steps_as_the_plain_adamw():
    """The loop's AdamW runs fused on the CPU; its updates, every group's LR and weight decay
    included, are the per-parameter implementation's (the fused kernel rounds differently)."""
    torch.manual_seed(0)
    lm = build_model(preset("paralstm", "nano", block="paper", vocab_size=64))
    twin = build_model(preset("paralstm", "nano", block="paper", vocab_size=64))
    twin.load_state_dict(lm.state_dict())
    options = dict(lr=1e-2, weight_decay=0.1, recurrent_lr_mult=0.5)
    fused = loop.build_optimizer(lm, device=torch.device("cpu"), **options)
    plain = torch.optim.AdamW(loop.optimizer_groups(twin, **options), betas=(0.9, 0.95), eps=1e-8,
                              foreach=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    initial = [p.detach().clone() for p in lm.parameters()]
    x = torch.randint(0, 64, (2, 17))
    for _ in range(3):
        for model, optimizer in ((lm, fused), (twin, plain)):
            optimizer.zero_grad(set_to_none=True)
            model(x[:, :-1], x[:, 1:]).backward()
            optimizer.step()
    for (name, p), q in zip(lm.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert all(not torch.equal(p, p0) for p, p0 in zip(lm.parameters(), initial))


def test_wsd_schedule():
    lrs = [wsd_lr(s, warmup=10, total=100, min_ratio=0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in lrs[10:80])  # stable until the last 20%
    assert all(a > b for a, b in zip(lrs[80:100], lrs[81:101]))  # then a linear decay
    assert lrs[100] == pytest.approx(0.1) and lrs[90] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="--schedule"):
        TrainConfig(schedule="linear").check()


def test_data_order_depends_on_the_data_seed_only(corpus_dir, tmp_path, monkeypatch):
    seen = []
    original = loop.train_batch

    def recording(tokens, step, *, seed, **kwargs):
        x, y = original(tokens, step, seed=seed, **kwargs)
        seen[-1].append(x)
        return x, y

    monkeypatch.setattr(loop, "train_batch", recording)
    weights = []
    for seed in (0, 1):
        seen.append([])
        out = tmp_path / f"s{seed}"
        train(TrainConfig(model="paragru", size="nano", data=str(corpus_dir), out=str(out), seq_len=16,
                          batch_size=2, max_steps=2, eval_every=2, ckpt_every=2, eval_tokens=32,
                          seed=seed, data_seed=0, peak_tflops=1e-3, log_every=1, progress=False,
                          device="cpu"))
        weights.append(json.loads((out / "config.json").read_text())["train"])
    assert all(torch.equal(a, b) for a, b in zip(seen[0], seen[1]))
    # MFU = training FLOPs/token x tokens/s / peak (here a made-up 1 GFLOP/s peak)
    flops = json.loads((out / "config.json").read_text())["train_flops_per_token"]
    records = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert len(records) == 2 and all(r["mfu"] == pytest.approx(r["tok_per_s"] * flops / 1e9) for r in records)
    assert weights[0]["data_seed"] == weights[1]["data_seed"] == 0
    assert TrainConfig(seed=5).batch_seed == 5 and TrainConfig(seed=5, data_seed=2).batch_seed == 2


def test_flops_count_of_the_transformer_by_hand():
    lm = build_model(preset("transformer", "nano", vocab_size=64))
    d, L, T, V, hidden = 64, 2, 32, 64, lm.cfg.mlp_hidden
    matmuls = L * (4 * d * d + 3 * d * hidden) + V * d
    assert forward_flops_per_token(lm, T) == 2 * matmuls + L * 2 * d * (T + 1)
    rnn = build_model(preset("paragru", "nano", vocab_size=64, block="paper"))
    mixer = rnn.blocks[0].mixer
    per_layer = 2 * (mixer.in_proj.weight.numel() + mixer.rnn.projection.weight.numel()
                     + mixer.out_proj.weight.numel() + 3 * d * rnn.cfg.mlp_hidden) + 18 * d + 2 * 4 * d
    assert forward_flops_per_token(rnn, T) == L * per_layer + 2 * V * d


def test_flops_count_an_untied_head_once():
    """An untied head is a Linear that the weight count already holds (it was added twice)."""
    tied = build_model(preset("transformer", "nano", vocab_size=64))
    untied = build_model(preset("transformer", "nano", vocab_size=64, tied_head=False))
    assert forward_flops_per_token(untied, 32) == forward_flops_per_token(tied, 32)
    classes = build_model(preset("paragru", "nano", vocab_size=64, tied_head=False, output_size=10))
    plain = build_model(preset("paragru", "nano", vocab_size=64))
    assert forward_flops_per_token(plain, 32) - forward_flops_per_token(classes, 32) == 2 * (64 - 10) * 64


def test_language_model_training_refuses_a_classifier_head():
    with pytest.raises(ValueError, match="output_size is for classifier heads"):
        TrainConfig(model_options={"tied_head": False, "output_size": 10}).check()


def test_model_options_parse_and_reject_bad_input():
    assert parse_model_options("rnn_expand=2, rnn_init=paper,recurrent_clip=null,rnn_in_proj=false") == {
        "rnn_expand": 2, "rnn_init": "paper", "recurrent_clip": None, "rnn_in_proj": False}
    with pytest.raises(ValueError, match="unknown model option"):
        parse_model_options("rnn_expnad=2")
    with pytest.raises(ValueError, match="unknown model option"):
        parse_model_options("vocab_size=10")  # set by the tokenizer, not an option
    with pytest.raises(ValueError, match="key=value"):
        parse_model_options("rnn_expand")
    # Python's spellings too: "False" stayed the string "False", which switched features on
    assert parse_model_options("gated_norm=False,tied_head=TRUE,recurrent_clip=None") == {
        "gated_norm": False, "tied_head": True, "recurrent_clip": None}
    with pytest.raises(ValueError, match="'rnn_expand' is given twice"):
        parse_model_options("rnn_expand=2,rnn_expand=3")
    entry = parse_entry("paralstm+std=block=standard,rnn_heads=1", "paper")
    assert (entry.model, entry.block, entry.options) == ("paralstm", "standard", {"rnn_heads": 1})
    entry = parse_entry("paragru+wsd=schedule=wsd,recurrent_lr_mult=0.1,rnn_expand=2", "paper")
    assert entry.options == {"rnn_expand": 2}
    assert entry.train_options == {"schedule": "wsd", "recurrent_lr_mult": 0.1}
    from pararnn.train.sweep import Run, SweepConfig, train_command
    command = train_command(SweepConfig(out="o", entries=[entry], lrs={}), Run("lr", entry, 1e-3, 0, 4), Path("r"))
    assert command[command.index("--schedule") + 1] == "wsd"
    assert command[command.index("--recurrent-lr-mult") + 1] == "0.1"
    with pytest.raises(ValueError, match="--schedule"):
        parse_entry("paragru+x=schedule=linear", "paper")
    with pytest.raises(ValueError, match="must start with a model"):
        parse_entry("gru+x=rnn_expand=2", "paper")
    with pytest.raises(SystemExit):
        main(["train", "--model-options", "nonsense=1"])


@pytest.mark.slow  # ~30 s: three `pararnn train` subprocesses
def test_sweep_end_to_end_on_cpu(corpus_dir, tmp_path, capsys):
    """Two LRs of one variant, then its best LR at another seed: the folder layout, the
    finished-run skip, the report, and `pararnn compare` rebuilding the report."""
    out = tmp_path / "sweep"
    argv = ["sweep", "--out", str(out), "--models", "", "--variant", "paragru+x2=rnn_expand=2",
            "--lrs", "paragru+x2=0.002,0.004", "--size", "nano", "--seq-len", "16",
            "--batch-size", "2", "--lr-steps", "3", "--final-steps", "3", "--seeds", "1",
            "--eval-every", "3", "--eval-tokens", "64", "--data", str(corpus_dir), "--jobs", "2",
            "--device", "cpu"]
    assert main(argv) == 0
    runs = {p.name for p in (out / "lr").iterdir()}
    assert runs == {"paragru+x2-lr0.002-s0", "paragru+x2-lr0.004-s0"}
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best_lr"]["paragru+x2"]
    assert {p.name for p in (out / "seeds").iterdir()} == {f"paragru+x2-lr{best['lr']:g}-s1"}
    for run in (out / "lr").iterdir():
        config = json.loads((run / "config.json").read_text())
        assert config["model"]["rnn_hidden"] == 2 * 64 and config["train"]["data_seed"] == 0
        assert (run / "result.json").exists() and not (run / "checkpoints").exists()
    assert best["val_loss"] == min(r["val_loss"] for r in summary["lr"])
    assert len(summary["seeds"]) == 1 and summary["seeds"][0]["seeds"] == [1]
    assert math.isfinite(summary["seeds"][0]["val_loss"])
    report = (out / "summary.md").read_text()
    assert "paragru+x2" in report and "Stage 2" in report and (out / "curves_lr.png").exists()
    assert "Device: cpu" in report and "    pararnn sweep --out " in report  # device and command

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/result.json")}
    capsys.readouterr()
    assert main(argv) == 0  # everything finished: nothing runs again
    assert "2 of 2 runs already finished" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("*/*/result.json")}
    report = (out / "summary.md").read_text()  # now listing both invocations

    (out / "summary.md").unlink()
    (out / "summary.json").unlink()
    assert main(["compare", str(out)]) == 0
    assert (out / "summary.md").read_text() == report
    assert report in capsys.readouterr().out


def test_sweep_rejects_a_changed_setup(corpus_dir, tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"size": "tiny", "seq_len": 16, "batch_size": 2,
                                                "lr_steps": 3, "data": None, "tokenizer": "byte",
                                                "vocab_size": 4096, "entries": [], "lrs": {}}))
    assert main(["sweep", "--out", str(out), "--models", "paragru", "--size", "nano",
                 "--device", "cpu"]) == 2
    assert main(["compare", str(Path(tmp_path))]) == 2  # neither a sweep nor a run folder


def test_bpe_sweep_trains_the_tokenizer_once(corpus_dir, tmp_path, monkeypatch):
    from pararnn.train.sweep import Entry, Run, SweepConfig, prepare_data, train_command
    cfg = SweepConfig(out=str(tmp_path / "sweep"), entries=[Entry("paragru", "paragru", "paper")],
                      lrs={"paragru": [1e-3]}, data=str(corpus_dir), tokenizer="bpe", vocab_size=300)
    prepare_data(cfg)
    shared = tmp_path / "sweep" / "tokenizer"
    command = train_command(cfg, Run("lr", cfg.entries[0], 1e-3, 0, 3), tmp_path / "run")
    assert command[command.index("--tokenizer-from") + 1] == str(shared)
    out = tmp_path / "run"
    train(TrainConfig(model="paragru", size="nano", data=str(corpus_dir), out=str(out), seq_len=16,
                      batch_size=2, max_steps=1, eval_every=1, ckpt_every=1, eval_tokens=32,
                      tokenizer="bpe", tokenizer_from=str(shared), progress=False, device="cpu"))
    assert (out / "tokenizer.json").read_text() == (shared / "tokenizer.json").read_text()
    # without --tokenizer the reused one's kind is taken; a contradicting one is refused
    assert TrainConfig(tokenizer_from=str(shared)).tokenizer == "bpe"
    # the memory check sizes the embedding by the reused vocabulary (300 -> 320), not --vocab-size
    from pararnn.train.distributed import DistInfo
    sized = []
    monkeypatch.setattr(loop, "check_training_memory", lambda model_cfg, **kw: sized.append(model_cfg.vocab_size))
    loop._check_memory(TrainConfig(size="nano", tokenizer_from=str(shared)), DistInfo())
    assert sized == [320]
    with pytest.raises(ValueError, match="holds a bpe tokenizer, not byte"):
        train(TrainConfig(model="paragru", size="nano", data=str(corpus_dir), out=str(tmp_path / "r2"),
                          tokenizer="byte", tokenizer_from=str(shared), progress=False, device="cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", ["paragru", "paralstm"])
@pytest.mark.parametrize("options", [dict(rnn_in_proj=False), dict(rnn_expand=2, rnn_heads=1),
                                     dict(rnn_init="paper", rnn_forget_bias=2.0)])
def test_rnn_options_on_gpu_match_decoding_and_train_in_bf16(model, options):
    """The GPU path (fused kernels) of every option: parallel forward == step-by-step
    decoding in float32, and a bf16-autocast training step gives finite gradients."""
    torch.manual_seed(0)
    lm = build_model(preset(model, "nano", block="paper", vocab_size=64, **options)).cuda()
    idx = torch.randint(0, 64, (2, 40), device="cuda")
    with torch.no_grad():
        full = lm(idx)
        caches = lm.new_caches()
        stepped = torch.cat([lm(idx[:, :8], caches=caches)]
                            + [lm(idx[:, t:t + 1], caches=caches) for t in range(8, 40)], dim=1)
    # float32, but cuDNN runs the causal conv in TF32 (~1e-3 relative), as in test_gpu.py
    torch.testing.assert_close(stepped, full, atol=2e-3, rtol=2e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = lm(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in lm.parameters())


def test_a_second_invocation_runs_its_own_entries_and_reports_all(tmp_path):
    from pararnn.train.sweep import SweepConfig, load_sweep_config, plan, save_sweep_config
    out = str(tmp_path / "sweep")
    first = SweepConfig(out=out, entries=[parse_entry("transformer", "standard")], lrs={"transformer": [1e-3, 2e-3]})
    save_sweep_config(first)
    variant = parse_entry("paragru+x2=rnn_expand=2", "paper")
    second = SweepConfig(out=out, entries=[variant], lrs={variant.name: [4e-3]})
    save_sweep_config(second)
    assert [r.entry.name for r in plan(second, "lr")] == ["paragru+x2"]
    saved = load_sweep_config(Path(out))
    assert [e.name for e in saved.entries] == ["transformer", "paragru+x2"]
    assert saved.lrs == {"transformer": [1e-3, 2e-3], "paragru+x2": [4e-3]}
    with pytest.raises(ValueError, match="other options"):
        save_sweep_config(SweepConfig(out=out, entries=[parse_entry("paragru+x2=rnn_expand=4", "paper")],
                                      lrs={"paragru+x2": [4e-3]}))
    with pytest.raises(ValueError, match="needs the lr stage"):
        plan(first, "seeds")  # two LRs to choose from: stage lr must run first
    # a one-value grid is a given LR: stage seeds needs no stage lr
    assert [(r.entry.name, r.lr, r.seed) for r in plan(second, "seeds")] == [
        ("paragru+x2", 4e-3, 0), ("paragru+x2", 4e-3, 1)]


def test_sweep_refuses_a_run_folder_of_another_configuration(tmp_path):
    """A run trained before the default block changed (or restored from another sweep's
    pack) must not count as this entry's run: planning it names the differing fields."""
    from pararnn.train.sweep import SweepConfig, best_lrs, plan, save_sweep_config
    out = tmp_path / "sweep"
    hybrid = parse_entry("paragru", "hybrid")
    cfg = SweepConfig(out=str(out), entries=[hybrid], lrs={"paragru": [2e-3, 4e-3]}, size="small")
    save_sweep_config(cfg)
    run = out / "lr" / "paragru-lr0.002-s0"
    run.mkdir(parents=True)
    recorded = preset("paragru", "small", block="tuned", vocab_size=320).to_dict()  # purely recurrent
    recorded.pop("attn_every")  # as recorded before the field existed: its default (0) applies
    (run / "config.json").write_text(json.dumps({"model": recorded}))
    (run / "result.json").write_text("{}")
    with pytest.raises(ValueError, match=r"attn_every 0 there, 8 here"):
        plan(cfg, "lr")
    with pytest.raises(ValueError, match="another configuration"):
        best_lrs(out, cfg)
    # the same run under a variant that names its options is accepted, whatever the vocabulary
    pure = parse_entry("paragru=attn_every=0", "hybrid")
    recorded.update(vocab_size=4096, output_size=4096)
    (run / "config.json").write_text(json.dumps({"model": recorded}))
    assert [r.lr for r in plan(SweepConfig(out=str(out), entries=[pure], lrs={"paragru": [2e-3, 4e-3]},
                                           size="small"), "lr")] == [2e-3, 4e-3]


def test_resume_refuses_other_model_options(corpus_dir, tmp_path):
    from pararnn.train.checkpoint import CheckpointError
    fields = dict(model="paragru", size="nano", data=str(corpus_dir), out=str(tmp_path / "run"), seq_len=16,
                  batch_size=2, max_steps=1, eval_every=1, ckpt_every=1, eval_tokens=32, progress=False,
                  device="cpu", model_options={"rnn_expand": 2})
    train(TrainConfig(**fields))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["rnn_hidden"] == 128 and config["model"]["mlp_hidden"] is not None
    with pytest.raises(CheckpointError, match="model-options"):
        train(TrainConfig(**{**fields, "model_options": {}, "resume": True}))


def test_a_diverged_run_counts_as_an_infinite_loss(tmp_path):
    """Stage-1 results where the highest LR diverged: the best LR is the finite one and the
    report renders the diverged row."""
    from pararnn.train.sweep import (SweepConfig, best_lrs, diverged, save_sweep_config, summarize_sweep,
                                     summary_markdown)
    out = tmp_path / "sweep"
    cfg = SweepConfig(out=str(out), entries=[parse_entry("paragru", "paper")], lrs={"paragru": [1e-3, 8e-3]})
    save_sweep_config(cfg)
    finite = {"run": "paragru-lr0.001-s0", "model": "paragru", "lr": 1e-3, "seed": 0, "params": 10,
              "steps": 4, "tokens": 64, "val_loss": 3.0, "val_bpb": 4.3, "tok_per_s": 100.0, "mfu": None,
              "curve": [[64, 3.0]], "stage": "lr", "entry": "paragru"}
    blown = {**finite, "run": "paragru-lr0.008-s0", "lr": 8e-3, "params": None, "val_loss": math.inf,
             "val_bpb": math.inf, "tok_per_s": None, "tokens": None, "curve": [], "diverged": True}
    for result in (finite, blown):
        (out / "lr" / result["run"]).mkdir(parents=True)
        (out / "lr" / result["run"] / "result.json").write_text(json.dumps(result))
    (out / "lr" / blown["run"] / "train.log").write_text("pararnn: error: the training loss became nan at step 3\n")
    assert diverged(out / "lr" / blown["run"]) and not diverged(out / "lr" / finite["run"])
    best = best_lrs(out, cfg)["paragru"]
    assert best["lr"] == 1e-3 and best["at_edge"]
    report = summary_markdown(summarize_sweep(out))
    assert "| paragru | 0.008 | inf | inf | n/a | n/a |" in report


def test_sweep_lists_from_the_command_line():
    from pararnn.train.sweep import DEFAULT_LRS, parse_sweep_lists
    lists = parse_sweep_lists(models="transformer,paragru", variants=["paragru+x=rnn_heads=1"],
                              lr_grids=["paragru+x=1e-3,4e-3"], stages="lr,seeds", seeds="0,1",
                              rnn_block="paper")
    assert [(e.name, e.block) for e in lists["entries"]] == [
        ("transformer", "standard"), ("paragru", "paper"), ("paragru+x", "paper")]
    assert lists["lrs"] == {"transformer": DEFAULT_LRS["transformer"], "paragru": DEFAULT_LRS["paragru"],
                            "paragru+x": [1e-3, 4e-3]}
    assert lists["stages"] == ["lr", "seeds"] and lists["seeds"] == [0, 1]
    for bad, match in [(dict(models="paragru,paragru"), "distinct"), (dict(stages="lr,final"), "--stages"),
                       (dict(lr_grids=["mamba2=1e-3"]), "not one of"), (dict(lr_grids=["paragru=a,b"]), "numbers"),
                       (dict(seeds=""), "--seeds")]:
        args = dict(models="paragru", variants=[], lr_grids=[], stages="lr", seeds="0", rnn_block="paper")
        with pytest.raises(ValueError, match=match):
            parse_sweep_lists(**{**args, **bad})


def _sweep_argv(out, corpus_dir, steps):
    return ["sweep", "--out", str(out), "--models", "paragru", "--lrs", "paragru=0.004", "--stages", "lr",
            "--size", "nano", "--seq-len", "16", "--batch-size", "2", "--lr-steps", str(steps),
            "--eval-every", str(steps), "--eval-tokens", "64", "--data", str(corpus_dir),
            "--keep-checkpoints", "--device", "cpu"]


@pytest.mark.slow  # ~20 s: three `pararnn train` subprocesses
def test_stopped_sweep_continues_its_runs_exactly(corpus_dir, tmp_path):
    """SIGTERM to a sweep (as `timeout` or its own --time-limit sends) while its run trains:
    the run saves a checkpoint at the step it reached; the same command again resumes it
    there (not from step 0 or the periodic checkpoint) and ends with the same weights and
    validation loss as a run that was never stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pararnn.train import open_checkpoint
    from safetensors.torch import load_file

    steps = 60
    stopped, reference = tmp_path / "stopped", tmp_path / "reference"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "pararnn", *_sweep_argv(stopped, corpus_dir, steps)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = stopped / "lr" / "paragru-lr0.004-s0"

    def trained_steps():
        log = run / "metrics.jsonl"
        return max([0] + [r["step"] for r in read_metrics(log) if r.get("kind") == "train"]) if log.exists() else 0

    deadline = time.time() + 120
    while time.time() < deadline and trained_steps() < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    reached = open_checkpoint(run).meta["step"]
    assert 20 <= reached < steps and f"SIGTERM at step {reached}:" in (run / "train.log").read_text()
    assert not (run / "result.json").exists()

    assert main(_sweep_argv(stopped, corpus_dir, steps)) == 0
    assert f"resumed from {run / 'checkpoints' / f'step_{reached:08d}'} at step {reached}" in (run / "train.log").read_text()
    assert main(_sweep_argv(reference, corpus_dir, steps)) == 0
    result = json.loads((run / "result.json").read_text())
    expected = json.loads((reference / "lr" / run.name / "result.json").read_text())
    assert result["val_loss"] == expected["val_loss"] and result["steps"] == steps
    a = load_file(str(open_checkpoint(run).path / "model.safetensors"))
    b = load_file(str(open_checkpoint(reference / "lr" / run.name).path / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_estimate_counts_a_gain_for_runs_sharing_the_device(tmp_path):
    """Runs sharing the device do more together than one alone (measured on the H200): the
    plan divides their work by shared_gain of the runs in a wave, never by more than that."""
    from pararnn.train.sweep import (STARTUP_S, Entry, Run, SweepConfig, estimate, run_seconds,
                                     shared_gain)
    assert shared_gain(1) == 1.0 and shared_gain(0) == 1.0
    assert shared_gain(5) == pytest.approx(1.2) and shared_gain(8) == pytest.approx(1.35)
    entries = [Entry("paragru", "paragru", "paper"), Entry("transformer", "transformer", "standard")]
    for jobs in (1, 2):
        cfg = SweepConfig(out=str(tmp_path / f"s{jobs}"), entries=entries,
                          lrs={"paragru": [1e-3, 2e-3], "transformer": [1e-3, 2e-3]}, size="nano",
                          seq_len=16, batch_size=2, lr_steps=5, eval_every=5, eval_tokens=64,
                          stages=["lr"], jobs=jobs, tokens_per_s={"paragru": 1.0, "transformer": 2.0})
        one = {e.name: run_seconds(cfg, Run("lr", e, 1e-3, 0, 5)) for e in entries}
        work = 2 * (one["paragru"] + one["transformer"])
        row = estimate(cfg)[0]
        assert row["device_s"] == pytest.approx(work / shared_gain(jobs) + STARTUP_S * 4 / jobs)


def test_expected_speed_scales_from_small_by_flops(tmp_path):
    """The table's rates are at --size small; other sizes scale by forward FLOPs per token,
    so a plan at medium expects each model ~3x slower, and a hybrid its own block's FLOPs."""
    from pararnn.models import build_model
    from pararnn.models.flops import forward_flops_per_token
    from pararnn.train.sweep import Entry, SweepConfig, expected_tokens_per_s

    def flops(model, size, block):
        with torch.device("meta"):
            return forward_flops_per_token(build_model(preset(model, size, block=block, vocab_size=4096)), 512)

    for model, block in (("transformer", "standard"), ("paralstm", "hybrid")):
        entry = Entry(model, model, block)
        small = SweepConfig(out=str(tmp_path), entries=[entry], lrs={}, tokens_per_s={model: 6e5})
        medium = SweepConfig(out=str(tmp_path), entries=[entry], lrs={}, size="medium",
                             tokens_per_s={model: 6e5})
        assert expected_tokens_per_s(small, entry) == 6e5
        ratio = flops(model, "small", block) / flops(model, "medium", block)
        assert 0.2 < ratio < 0.5
        assert expected_tokens_per_s(medium, entry) == pytest.approx(6e5 * ratio)


def test_measured_speed_replaces_the_flops_estimate(tmp_path):
    """--tokens-per-s: a rate measured at the sweep's own size is used as given (no FLOPs
    scaling), for that model only; the others keep the estimate."""
    from pararnn.train.sweep import Entry, Run, SweepConfig, expected_tokens_per_s, run_seconds
    gru, lstm = Entry("paragru", "paragru", "hybrid"), Entry("paralstm", "paralstm", "hybrid")
    estimated = SweepConfig(out=str(tmp_path), entries=[gru, lstm], lrs={}, size="medium")
    measured = SweepConfig(out=str(tmp_path), entries=[gru, lstm], lrs={}, size="medium",
                           measured_tokens_per_s={"paragru": 2.5e5})
    assert expected_tokens_per_s(measured, gru) == 2.5e5
    assert expected_tokens_per_s(estimated, gru) < 2.5e5  # 407k at small, ~3x fewer FLOPs
    assert expected_tokens_per_s(measured, lstm) == expected_tokens_per_s(estimated, lstm)
    run = Run("seeds", gru, 1e-3, 0, 100)
    tokens = 100 * 32 * 512 + 1 * 262144 / 3  # one validation at the end (eval_every 100)
    assert run_seconds(measured, run) == pytest.approx(tokens / 2.5e5)


def test_tokens_per_s_flag_parses_rates_and_rejects_bad_ones(tmp_path, capsys):
    from pararnn.train.sweep import parse_rates
    assert parse_rates(["paragru=2.5e5,transformer=4e5", "mamba2=1e5"]) == {
        "paragru": 2.5e5, "transformer": 4e5, "mamba2": 1e5}
    assert parse_rates([]) == {}
    for bad, says in (("gru=1e5", "'gru' is not one of"), ("paragru=0", "one positive number"),
                      ("paragru=fast", "comma-separated numbers"), ("paragru", "one positive number")):
        with pytest.raises(ValueError, match=says):
            parse_rates([bad])
    args = ["sweep", "--out", str(tmp_path / "s"), "--models", "paragru", "--size", "medium",
            "--final-steps", "100", "--seeds", "0", "--dry-run"]
    assert main(args) == 0
    estimated = capsys.readouterr().out
    assert main(args + ["--tokens-per-s", "paragru=1e9"]) == 0
    fast = capsys.readouterr().out
    assert "measured speeds (--tokens-per-s)" in fast and "measured" not in estimated

    def seconds(out):
        return int(out.split("estimate: ")[1].split()[0])
    assert seconds(fast) < seconds(estimated)
    assert main(["sweep", "--out", str(tmp_path / "s"), "--tokens-per-s", "rnn=1", "--dry-run"]) == 2
    assert "'rnn' is not one of" in capsys.readouterr().err


def test_sweep_starts_only_runs_that_fit_its_time(corpus_dir, tmp_path, capsys):
    """--finish-within: at the expected speed (here 1e-5 tokens/s at small) no run fits, so none starts,
    the stage is left unfinished and the later stage is not attempted."""
    from pararnn.train.sweep import Entry, Run, SweepConfig, run_seconds, sweep
    cfg = SweepConfig(out=str(tmp_path / "sweep"), entries=[Entry("paragru", "paragru", "paper")],
                      lrs={"paragru": [1e-3, 2e-3]}, size="nano", seq_len=16, batch_size=2, lr_steps=5,
                      eval_every=5, eval_tokens=64, data=str(corpus_dir), device="cpu",
                      finish_within=3600, tokens_per_s={"paragru": 1e-5})
    assert run_seconds(cfg, Run("lr", cfg.entries[0], 1e-3, 0, 5)) > 3600
    assert run_seconds(cfg, Run("lr", cfg.entries[0], 1e-3, 0, 5), from_step=5) < 1  # resumed at the end
    assert sweep(cfg) == []
    out = capsys.readouterr().out
    assert "2 run(s) not started: predicted not to finish within --finish-within" in out
    assert "stage lr is unfinished" in out and "stage seeds" not in out
    assert not (tmp_path / "sweep" / "lr").exists()
    # a --time-limit shorter than a run's start-up says so
    sweep(dataclasses.replace(cfg, finish_within=None, time_limit=20))
    assert "not started: less than a run's start-up (45 s) is left of --time-limit" in capsys.readouterr().out
    assert not (tmp_path / "sweep" / "lr").exists()
