"""Training end to end on CPU: loss falls, exact resume, atomic checkpoints, DDP (gloo), CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pararnn.train.loop as loop
from pararnn.cli import main
from pararnn.train import CheckpointError, TrainConfig, open_checkpoint, train
from pararnn.train.checkpoint import CheckpointWarning
from pararnn.train.metrics import read_metrics
from source_corpus import write_source_corpus

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """~100 KB of real Python source in 50 files."""
    return write_source_corpus(tmp_path_factory.mktemp("corpus"))


def config(corpus_dir, out, **overrides):
    fields = dict(model="paragru", size="nano", data=str(corpus_dir), out=str(out), seq_len=32,
                  batch_size=4, max_steps=12, eval_every=4, ckpt_every=4, eval_tokens=256,
                  log_every=1, lr=3e-3, progress=False, device="cpu")
    fields.update(overrides)
    return TrainConfig(**fields)


def curve(run_dir):
    """Metrics without the timing field, which legitimately differs between runs."""
    return [{k: v for k, v in r.items() if k != "tok_per_s"} for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


def weights(run_dir):
    return load_file(str(open_checkpoint(run_dir).path / "model.safetensors"))


@pytest.fixture(scope="module")
def reference_run(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "reference"
    train(config(corpus_dir, out))
    return out


def test_tiny_model_learns_on_the_default_corpus(tmp_path):
    """The `tiny` ParaGRU LM on the standard-library corpus: the loss falls within 30 steps."""
    cfg = TrainConfig(model="paragru", size="tiny", out=str(tmp_path / "tiny"), seq_len=32, batch_size=4,
                      max_steps=30, lr=3e-3, eval_every=30, ckpt_every=30, eval_tokens=512,
                      log_every=5, progress=False, device="cpu")
    val = train(cfg)
    losses = [r["loss"] for r in read_metrics(tmp_path / "tiny" / "metrics.jsonl") if r["kind"] == "train"]
    assert losses[-1] < losses[0] - 1.0, losses
    assert val["val_loss"] < 4.0 and val["val_bpb"] > 0
    assert (tmp_path / "tiny" / "loss.png").stat().st_size > 1000


def test_run_folder_contents(reference_run):
    run = reference_run
    assert (run / "loss.png").is_file() and (run / "config.json").is_file()
    ckpt = open_checkpoint(run)
    assert ckpt.meta["step"] == 12 and ckpt.path.name == "step_00000012"
    assert {p.name for p in ckpt.path.iterdir()} == {"model.safetensors", "state.pt", "meta.json", "tokenizer.json"}
    assert len(list((run / "checkpoints").iterdir())) == 2  # keep_checkpoints=2
    kinds = [r["kind"] for r in read_metrics(run / "metrics.jsonl")]
    assert kinds.count("train") == 12 and kinds.count("val") == 3


def test_killed_run_resumes_exactly(corpus_dir, reference_run, tmp_path, monkeypatch):
    """Kill a run after step 6 (checkpoint at 4, metrics logged to 6); --resume continues
    from step 4 with the same batches: same loss curve and same final weights."""
    out = tmp_path / "killed"
    real_batch = loop.train_batch

    def dying_batch(tokens, step, **kw):
        if step == 6:
            raise KeyboardInterrupt  # as if the process were killed here
        return real_batch(tokens, step, **kw)

    monkeypatch.setattr(loop, "train_batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        train(config(corpus_dir, out))
    assert open_checkpoint(out).meta["step"] == 4
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == 6

    monkeypatch.setattr(loop, "train_batch", real_batch)
    train(config(corpus_dir, out, resume=True))
    assert curve(out) == curve(reference_run)
    a, b = weights(out), weights(reference_run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_a_checkpoint_where_the_run_stopped(corpus_dir, reference_run, tmp_path, monkeypatch):
    """SIGTERM (a sweep's time limit) after step 6: the run saves a checkpoint at step 6,
    between its periodic ones (4, 8), and stops; --resume continues from there with the
    same batches and LR schedule: same final weights and validation records."""
    import signal
    out = tmp_path / "terminated"
    real_batch = loop.train_batch

    def batch_then_sigterm(tokens, step, **kw):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # handled after this step, as at any moment
        return real_batch(tokens, step, **kw)

    monkeypatch.setattr(loop, "train_batch", batch_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM at step 6"):
        train(config(corpus_dir, out))
    assert open_checkpoint(out).meta["step"] == 6
    assert signal.getsignal(signal.SIGTERM) is before  # the handler lives only while training
    monkeypatch.setattr(loop, "train_batch", real_batch)
    train(config(corpus_dir, out, resume=True))
    assert curve(out) == curve(reference_run)
    a, b = weights(out), weights(reference_run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_killed_before_its_first_checkpoint_restarts_cleanly(corpus_dir, reference_run, tmp_path,
                                                                 monkeypatch):
    out = tmp_path / "early"
    real_batch = loop.train_batch

    def dying_batch(tokens, step, **kw):
        if step == 2:
            raise KeyboardInterrupt
        return real_batch(tokens, step, **kw)

    monkeypatch.setattr(loop, "train_batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        train(config(corpus_dir, out))
    with pytest.raises(ValueError, match="already holds a run"):  # its metrics are kept...
        train(config(corpus_dir, out))
    monkeypatch.setattr(loop, "train_batch", real_batch)
    train(config(corpus_dir, out, resume=True))  # ...until --resume starts it again
    assert curve(out) == curve(reference_run)


def test_failed_checkpoint_write_keeps_the_previous_one(corpus_dir, reference_run, tmp_path, monkeypatch):
    import safetensors.torch
    out = tmp_path / "crash"
    real_save, calls = safetensors.torch.save_file, []

    def crashing_save(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the second checkpoint dies half-written
            Path(filename).write_bytes(b"partial")
            raise OSError("disk full")
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        train(config(corpus_dir, out))
    ckpt = open_checkpoint(out)
    assert ckpt.meta["step"] == 4 and len(ckpt.model_state()) > 0
    assert [p.name for p in (out / "checkpoints").glob(".tmp_step_*")]  # the dead write's folder
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    train(config(corpus_dir, out, resume=True))
    assert curve(out) == curve(reference_run)
    assert not list((out / "checkpoints").glob(".tmp_*"))  # removed when the run started again


def test_start_removes_only_our_stale_temporaries(reference_run, corpus_dir, tmp_path, capsys):
    """Leftovers of killed writes go (checkpoint folders, atomic-rename files); anything
    else in the run folder, even with a similar name, stays."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    ours = [run / "checkpoints" / ".tmp_step_00000016_4242", run / ".latest.tmp4242",
            run / ".config.json.tmp17"]
    others = [run / "checkpoints" / ".tmp_notes", run / "checkpoints" / "tmp_step_00000016_1",
              run / ".latest.tmp", run / "notes.txt"]
    ours[0].mkdir()
    (ours[0] / "model.safetensors").write_bytes(b"partial")
    for path in ours[1:] + others[1:]:
        path.write_text("x")
    others[0].mkdir()
    train(config(corpus_dir, run, resume=True))  # already at max_steps: starts, removes, ends
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in others)
    assert f"removed {ours[0]}" in capsys.readouterr().out


def truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[:len(data) // 2])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(reference_run, corpus_dir, tmp_path,
                                                                  capsys):
    """A truncated model.safetensors in the latest checkpoint (step 12): eval and --resume
    use step 8 and say so; with every checkpoint damaged, the error lists each one."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    latest = open_checkpoint(run).path
    truncate(latest / "model.safetensors")
    with pytest.warns(CheckpointWarning, match="step_00000012.*using .*step_00000008"):
        assert open_checkpoint(run).meta["step"] == 8
    with pytest.raises(CheckpointError, match="corrupt"):  # a folder named directly: no fallback
        open_checkpoint(latest).model_state()
    (run / "latest").rename(run / "latest.bak")  # without `latest`, the step folders are tried
    with pytest.warns(CheckpointWarning, match="step_00000012.*using .*step_00000008"):
        assert open_checkpoint(run).meta["step"] == 8
    (run / "latest.bak").rename(run / "latest")

    code, out, err = run_cli(capsys, "eval", "--checkpoint", str(run), "--device", "cpu", "--no-progress")
    assert code == 0 and "step 8 on" in out
    warning = err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("pararnn: warning: ") and "step_00000012" in warning[0]

    with pytest.warns(CheckpointWarning):  # resume redoes steps 9..12 and rewrites step 12
        train(config(corpus_dir, run, resume=True))
    assert curve(run) == curve(reference_run)
    a, b = weights(run), weights(reference_run)
    assert all(torch.equal(a[k], b[k]) for k in a)

    for ckpt in (run / "checkpoints").iterdir():
        truncate(ckpt / "model.safetensors")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(run), "--device", "cpu")
    assert code == 2 and err.count("\n") == 1
    assert "no usable checkpoint" in err and "step_00000008" in err and "step_00000012" in err


def test_eval_from_another_directory_and_with_moved_data(corpus_dir, tmp_path, monkeypatch, capsys):
    """A run trained with a relative --data stores it absolute: eval works from elsewhere.
    Once the data is moved, eval names the stored path, and --data finds the moved copy
    (whose held-out split is the same, so the score is too)."""
    work = tmp_path / "work"
    shutil.copytree(corpus_dir, work / "corpus")
    monkeypatch.chdir(work)
    train(config("corpus", "run", max_steps=2, eval_every=2, ckpt_every=2))
    assert json.loads((work / "run" / "config.json").read_text())["train"]["data"] == str(work / "corpus")
    monkeypatch.chdir(tmp_path)
    run = str(work / "run")
    code, before, err = run_cli(capsys, "eval", "--checkpoint", run, "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert "tokens of" in before

    (work / "corpus").rename(tmp_path / "moved")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", run, "--device", "cpu")
    assert code == 2 and f"--data {work / 'corpus'}" in err and "does not exist" in err
    code, after, err = run_cli(capsys, "eval", "--checkpoint", run, "--data", "moved", "--split", "held-out",
                               "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert after.splitlines()[-1] == before.splitlines()[-1]  # the same loss, perplexity, bits/byte


def matches(a_dir, b_dir, keys):
    """Two runs' loss curves (``keys`` of each record) within 1e-4 and final weights within
    1e-4: Adam divides by sqrt(v), so float rounding of a gradient all-reduce can move a
    weight by ~1e-5."""
    a, b = curve(a_dir), curve(b_dir)
    assert [(r["kind"], r["step"]) for r in a] == [(r["kind"], r["step"]) for r in b]
    for ra, rb in zip(a, b):
        for key in keys:
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=1e-4), (key, ra, rb)
    wa, wb = weights(a_dir), weights(b_dir)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_torchrun_on_cpu_with_gloo_matches_one_process(sharding, corpus_dir, tmp_path):
    """`pararnn train` under torchrun (2 processes, gloo), with DDP or FSDP2: batch 2 per
    process gives the same training as one process with batch 4.

    The DDP run (8 steps, checkpoints at 4 and 8) then checks that FSDP resumes a checkpoint
    written without it: its step-4 checkpoint (the optimizer state numbered, as torch saves
    it) resumed under FSDP, which loads optimizer states by parameter name, continues as the
    uninterrupted DDP run (it failed with a KeyError)."""
    steps = 8 if sharding == "ddp" else 4
    single = tmp_path / "single"
    train(config(corpus_dir, single, max_steps=steps, batch_size=4, eval_every=4, ckpt_every=4))
    split = tmp_path / sharding
    result = torchrun_train(split, corpus_dir, 2, "--keep-checkpoints", "2",
                            *(["--fsdp"] if sharding == "fsdp" else []), max_steps=steps)
    assert result.returncode == 0, result.stderr[-3000:]
    matches(single, split, ("loss", "val_loss", "tokens"))
    if sharding == "fsdp":
        return

    cut = tmp_path / "cut"
    shutil.copytree(split, cut)  # as if killed before the step-8 checkpoint
    shutil.rmtree(cut / "checkpoints" / "step_00000008")
    (cut / "latest").write_text("checkpoints/step_00000004\n")
    result = torchrun_train(cut, corpus_dir, 2, "--fsdp", "--resume", max_steps=8)
    assert result.returncode == 0, result.stderr[-3000:]
    matches(cut, split, ("loss", "val_loss"))


def torchrun_train(out, corpus_dir, processes, *flags, batch_size=2, max_steps=4):
    """`pararnn train` of the nano ParaGRU under torchrun on the CPU (gloo)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(processes), "-m", "pararnn", "train", "--model", "paragru", "--size", "nano",
           "--data", str(corpus_dir), "--out", str(out), "--seq-len", "32",
           "--batch-size", str(batch_size), "--max-steps", str(max_steps), "--eval-every", "4",
           "--ckpt-every", "4", "--eval-tokens", "256", "--log-every", "1", "--lr", "3e-3",
           "--no-progress", "--device", "cpu", *flags]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("windows", [1, 5, 9])
def test_validation_split_over_processes_scores_every_window_once(reference_run, monkeypatch, windows):
    """Over 2 or 3 processes, validation scores every window exactly once, however the
    windows divide (a window count below the process count scored none and failed, and a
    remainder was dropped): the summed counts and losses are the one process's."""
    import numpy as np
    from pararnn.train import distributed as D
    from pararnn.train.checkpoint import load_model

    model = load_model(open_checkpoint(reference_run), torch.device("cpu"))
    tokens = np.random.default_rng(0).integers(0, 256, windows * 32 + 1)
    token_bytes = np.ones(256)

    def shares(world):
        """Each process's (nats, tokens, bytes) as it hands them to the all-reduce."""
        handed = []
        monkeypatch.setattr(D, "all_reduce_sum", lambda values, info: handed.append(values) or [1.0] * 3)
        for rank in range(world):
            loop.evaluate(model, tokens, token_bytes, seq_len=32, batch_size=2, max_windows=None,
                          device=torch.device("cpu"), autocast=torch.autocast("cpu", enabled=False),
                          info=D.DistInfo(rank=rank, world=world))
        return handed

    (one,) = shares(1)
    assert one[1] == one[2] == windows * 32
    for world in (2, 3):
        total = [sum(column) for column in zip(*shares(world))]
        assert total[1:] == one[1:] and total[0] == pytest.approx(one[0], rel=1e-6)


def test_resume_on_another_number_of_processes_is_refused(corpus_dir, reference_run, tmp_path):
    """Two processes of the same --batch-size would double the global batch of a
    one-process run: refused with the tokens per step named (they went unchecked)."""
    out = tmp_path / "two"
    shutil.copytree(reference_run, out)
    result = torchrun_train(out, corpus_dir, 2, "--resume", batch_size=4, max_steps=12)
    assert result.returncode != 0
    assert "trained on 128 tokens per step, this run takes 256" in result.stderr


# ---- the command line ---------------------------------------------------------------


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_and_generate(reference_run, corpus_dir, capsys):
    # by default eval scores what each validation during training scored (--eval-tokens 256)
    code, out, err = run_cli(capsys, "eval", "--checkpoint", str(reference_run), "--device", "cpu")
    assert code == 0 and "perplexity" in out and "bits/byte" in out and ": 256 tokens of" in out
    val = [r for r in read_metrics(reference_run / "metrics.jsonl") if r["kind"] == "val"][-1]
    assert f"loss {val['val_loss']:.4f} nats/token" in out
    assert "eval" in err  # the progress bar
    for flag in ("--tokens", "--max-tokens"):
        code, out, err = run_cli(capsys, "eval", "--checkpoint", str(reference_run), "--data", str(corpus_dir),
                                 flag, "512", "--device", "cpu", "--no-progress")
        assert code == 0 and ": 512 tokens of" in out and err == ""
    code, out, err = run_cli(capsys, "generate", "--checkpoint", str(reference_run), "--prompt", "def ",
                             "--max-new-tokens", "20", "--top-k", "20", "--top-p", "0.9", "--device", "cpu")
    assert code == 0 and out.startswith("def ") and "tokens/s" in err and "decode state" in err


def test_eval_of_a_file_scores_it_as_one_document(reference_run, tmp_path, capsys):
    """``eval --data FILE`` (all of it by default) scores the file as one document, not the
    two parts its train/held-out split cuts it into (an end-of-text between them)."""
    from pararnn.train.checkpoint import open_checkpoint

    text = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(40))
    (tmp_path / "one.py").write_text(text)
    tokens = len(open_checkpoint(str(reference_run)).tokenizer().encode_documents([text]))
    code, out, err = run_cli(capsys, "eval", "--checkpoint", str(reference_run), "--data",
                             str(tmp_path / "one.py"), "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert f"tokens of {tokens:,}" in out and "on " + str(tmp_path / "one.py") in out


def test_config_file(corpus_dir, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": "transformer", "size": "nano", "max-steps": 2, "seq_len": 16,
                               "batch_size": 2, "eval_tokens": 64, "data": str(corpus_dir),
                               "device": "cpu", "progress": False, "out": "ignored"}))
    code, out, err = run_cli(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert code == 0, err
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["train"]
    assert saved["model"] == "transformer" and saved["max_steps"] == 2 and saved["out"] == str(tmp_path / "r")
    assert saved["lr"] == 1e-3  # the config file gives no LR: the Transformer's default
    assert "peak LR 0.001" in out


def test_a_hybrid_run_says_how_its_blocks_are_laid_out(corpus_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--model", "paralstm", "--size", "nano", "--model-options",
                             "attn_every=2", "--max-steps", "1", "--seq-len", "16", "--batch-size", "2",
                             "--eval-tokens", "64", "--data", str(corpus_dir), "--device", "cpu",
                             "--no-progress", "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert "model: paralstm nano, 1 paralstm + 1 attention blocks:" in out and "peak LR 0.002" in out


def test_a_run_says_when_its_model_is_not_parameter_matched(corpus_dir, tmp_path, capsys):
    """Mixer options that outgrow a Transformer block leave the SwiGLU at its floor: the
    run says by how much the model exceeds the Transformer of its size."""
    args = ["--size", "nano", "--block", "standard", "--max-steps", "1", "--seq-len", "16",
            "--batch-size", "2", "--eval-tokens", "64", "--data", str(corpus_dir), "--device", "cpu",
            "--no-progress"]
    code, out, err = run_cli(capsys, "train", "--model", "paragru", "--model-options", "rnn_expand=4",
                             *args, "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert "note: 284% more parameters than the Transformer of this size" in out
    code, out, err = run_cli(capsys, "train", "--model", "paragru", *args, "--out", str(tmp_path / "plain"))
    assert code == 0, err
    assert "more parameters than the Transformer" not in out


def test_default_lr_is_each_models_own():
    from pararnn.train.loop import DEFAULT_LR
    assert {m: TrainConfig(model=m).lr for m in DEFAULT_LR} == DEFAULT_LR
    assert DEFAULT_LR["transformer"] < DEFAULT_LR["paragru"]
    assert TrainConfig(model="transformer", lr=3e-3).lr == 3e-3  # a given LR wins
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(model="rwkv").check()


def corrupt_copy(reference_run, tmp_path, what):
    """A copy of the run with every checkpoint damaged (one damaged checkpoint is skipped)."""
    run = tmp_path / "copy"
    shutil.copytree(reference_run, run)
    for ckpt in (run / "checkpoints").iterdir():
        if what == "weights":
            (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
        elif what == "meta":
            (ckpt / "meta.json").write_text("{not json")
    return run


@pytest.mark.parametrize("case", ["missing", "weights", "meta", "empty_data", "unknown_model",
                                  "seq_len_0", "other_model", "existing_out", "bad_prompt"])
def test_bad_input_gives_one_line_errors(case, reference_run, corpus_dir, tmp_path, capsys):
    before = sorted(p.relative_to(reference_run) for p in reference_run.rglob("*"))
    empty = tmp_path / "empty"
    empty.mkdir()
    common = ["--size", "nano", "--device", "cpu", "--no-progress", "--max-steps", "2"]
    argv = {  # built lazily: some cases make a damaged copy of the reference run
        "missing": lambda: ["eval", "--checkpoint", str(tmp_path / "nope")],
        "weights": lambda: ["eval", "--checkpoint", str(corrupt_copy(reference_run, tmp_path, "weights"))],
        "meta": lambda: ["generate", "--checkpoint", str(corrupt_copy(reference_run, tmp_path, "meta"))],
        "empty_data": lambda: ["train", "--data", str(empty), "--out", str(tmp_path / "r"), *common],
        "unknown_model": lambda: ["train", "--model", "gpt5", "--out", str(tmp_path / "r"), *common],
        "seq_len_0": lambda: ["train", "--seq-len", "0", "--data", str(corpus_dir),
                              "--out", str(tmp_path / "r"), *common],
        "other_model": lambda: ["train", "--model", "transformer", "--resume", "--data", str(corpus_dir),
                                "--out", str(reference_run), *common],
        "existing_out": lambda: ["train", "--data", str(corpus_dir), "--out", str(reference_run), *common],
        "bad_prompt": lambda: ["generate", "--checkpoint", str(reference_run), "--prompt", ""],
    }[case]()
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pararnn: error: "), err
    assert "Traceback" not in err
    assert sorted(p.relative_to(reference_run) for p in reference_run.rglob("*")) == before
    assert not (tmp_path / "r" / "latest").exists()


@pytest.mark.parametrize("option, value", [("lr", 1e-3), ("seed", 5), ("max_steps", 20),
                                           ("weight_decay", 0.0), ("schedule", "wsd")])
def test_resume_refuses_options_the_checkpoint_would_override(corpus_dir, reference_run, tmp_path,
                                                              option, value):
    """The restored optimizer and scheduler kept the saved LR, weight decay and schedule
    while the run printed and recorded the new ones; another seed changed the batches
    mid-run: each is refused, naming the option, before anything is written."""
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(CheckpointError, match=f"trained with --{option.replace('_', '-')} "):
        train(config(corpus_dir, out, resume=True, **{option: value}))
    assert sorted(p.name for p in out.rglob("*")) == before


def test_resume_takes_the_default_corpus_by_name(tmp_path):
    """A run trained without --data resumes with --data python:stdlib (the same corpus)."""
    from pararnn.train.loop import _same_path
    assert _same_path(None, "python:stdlib") and _same_path("python:stdlib", None)
    assert not _same_path(None, str(tmp_path)) and _same_path(str(tmp_path), str(tmp_path / "."))


@pytest.mark.parametrize("option, value, message", [
    ("keep_checkpoints", 0, "--keep-checkpoints must be at least 1"),  # it kept every one
    ("warmup_steps", -3, "--warmup-steps must be at least 0"),
    ("min_lr_ratio", 1.5, r"--min-lr-ratio must be in \[0, 1\]"),
    ("weight_decay", -0.1, "--weight-decay must be at least 0"),
    ("grad_clip", 0.0, "--grad-clip must be positive"),
])
def test_training_options_out_of_range_are_refused(option, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{option: value}).check()


@pytest.mark.parametrize("model, options", [("transformer", {"rnn_expand": 2}),
                                            ("mamba2", {"attn_every": 4}),
                                            ("paragru", {"mamba_d_state": 32})])
def test_model_options_of_another_models_mixer_are_refused(model, options):
    """A Transformer with rnn_expand trained as the plain Transformer, silently (and a
    sweep variant with it was a copy of the baseline)."""
    from pararnn.train.sweep import parse_entry
    key = next(iter(options))
    with pytest.raises(ValueError, match=f"model option {key} applies to .* only, not to {model}"):
        TrainConfig(model=model, model_options=options).check()
    with pytest.raises(ValueError, match=f"model option {key} applies to"):
        parse_entry(f"{model}+x={key}={options[key]}", "standard")
    TrainConfig(model="paralstm", model_options={"rnn_expand": 2, "attn_every": 4}).check()
