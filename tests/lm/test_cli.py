"""The `pararnn` command's help texts and its memory check before training."""

import argparse

import pytest
import torch

import pararnn.train.memory as memory
from pararnn.cli import build_parser, main
from pararnn.models import build_model, preset


@pytest.mark.parametrize("command", ["train", "eval"])
def test_every_flag_has_help_and_a_shown_default(command):
    sub = build_parser().commands[command]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[0]
        assert action.help and action.help.strip(), f"{command} {flag} has no help text"
        # the default is either appended by the formatter or stated in the help text itself
        shown = sub._get_formatter()._get_help_string(action)
        assert action.required or "(default" in shown, f"{command} {flag} does not show its default"


def test_help_runs_and_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: paragru)" in text and "--max-steps MAX_STEPS optimizer steps" in text
    assert "(default: 1000)" in text and "(default: the Python standard library's source" in text


def test_training_memory_estimate_adds_state_and_activations():
    cfg = preset("paragru", "nano", vocab_size=320)
    with torch.device("meta"):
        params = build_model(cfg).num_params()
    need = memory.training_bytes(cfg, batch_size=4, seq_len=32, autocast_bf16=False)
    assert need["params"] == params
    assert need["state"] == 16 * params
    tokens = 4 * 32
    assert need["activations"] == tokens * cfg.n_layers * cfg.d_model * 16 * 4 + 2 * tokens * 320 * 4
    assert need["total"] == need["state"] + need["activations"]
    sharded = memory.training_bytes(cfg, batch_size=4, seq_len=32, autocast_bf16=True, shards=4)
    assert sharded["state"] == 4 * params and sharded["activations"] < need["activations"]


def test_cpu_memory_is_read():
    free = memory.available_bytes(torch.device("cpu"))
    assert free is None or free > 0


def test_a_model_too_large_for_memory_is_refused_before_building(tmp_path, capsys, monkeypatch):
    """`--size 7b` with 8 GiB free: one line with the numbers, nothing built or written."""
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 2**30)
    built = []
    monkeypatch.setattr("pararnn.train.loop.build_model", lambda *a, **k: built.append(a))
    out = tmp_path / "big"
    code = main(["train", "--size", "7b", "--out", str(out), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pararnn: error: --model paragru --size 7b needs about "), err
    with torch.device("meta"):  # the default block of `pararnn train` (byte vocabulary: 320)
        params = build_model(preset("paragru", "7b", vocab_size=320, block="auto")).num_params()
    assert f"{params:,} parameters x 16 bytes" in err and "cpu has 8.0 GiB free" in err
    assert not built and not out.exists()


@pytest.mark.parametrize("spare", [0, -1])
def test_the_check_compares_the_estimate_with_free_memory(spare, monkeypatch):
    cfg = preset("paragru", "nano", vocab_size=320)
    need = memory.training_bytes(cfg, batch_size=4, seq_len=32, autocast_bf16=False)["total"]
    monkeypatch.setattr(memory, "available_bytes", lambda device: need + spare)

    def check():
        memory.check_training_memory(cfg, model="paragru", size="nano", batch_size=4, seq_len=32,
                                     device=torch.device("cpu"), autocast_bf16=False, fsdp=False, world=1)
    if spare >= 0:
        check()
    else:
        with pytest.raises(ValueError, match="needs about"):
            check()


def test_memory_check_of_a_context_parallel_run_counts_its_chunk(monkeypatch):
    """A context-parallel rank holds seq_len / K tokens of every sequence: the check
    estimates that (it refused the long sequences context parallelism is for)."""
    import pararnn.train.loop as loop
    from pararnn.train.distributed import DistInfo

    asked = []
    monkeypatch.setattr(loop, "check_training_memory", lambda cfg, **kw: asked.append(kw["seq_len"]))
    for context, world in ((1, 1), (2, 2), (4, 8)):
        cfg = loop.TrainConfig(size="nano", seq_len=1024, context_parallel=context, device="cpu")
        loop._check_memory(cfg, DistInfo(world=world))
    assert asked == [1024, 512, 256]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_memory_check_uses_free_device_memory():
    device = torch.device("cuda", torch.cuda.current_device())
    free, total = torch.cuda.mem_get_info(device)
    assert 0 < memory.available_bytes(device) <= total
    cfg = preset("paragru", "7b", vocab_size=320)
    need = memory.training_bytes(cfg, batch_size=64, seq_len=4096, autocast_bf16=True)["total"]
    assert need > free  # activations alone: about 1.1 TB by the estimate
    with pytest.raises(ValueError, match=f"{device} has .* GiB free"):
        memory.check_training_memory(cfg, model="paragru", size="7b", batch_size=64, seq_len=4096,
                                     device=device, autocast_bf16=True, fsdp=False, world=1)


def test_an_unknown_device_is_one_error_line(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--device", "foo", "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pararnn: error: --device 'foo' is not a device")


def test_a_checkpoint_not_matching_its_config_names_the_keys(tmp_path):
    """A checkpoint whose weights lack a tensor: the error lists the missing key (torch's
    first line alone said only "Error(s) in loading state_dict")."""
    from safetensors.torch import load_file, save_file

    from checkpoints import nano_checkpoint
    from pararnn.train.checkpoint import CheckpointError, load_model, open_checkpoint
    ckpt = open_checkpoint(nano_checkpoint(tmp_path / "run", "paragru"))
    weights = load_file(str(ckpt.path / "model.safetensors"))
    weights.pop("norm.weight")
    save_file(weights, str(ckpt.path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r'does not match its model config: Missing key\(s\) in '
                       r'state_dict: "norm.weight"'):
        load_model(ckpt, torch.device("cpu"))
