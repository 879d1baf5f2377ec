"""One-layer paper models: size-less presets, optional MLP, untied heads, the bare parity cell."""

import pytest
import torch

from pararnn.models import MODELS, build_model, mixer_factory, preset
from pararnn.models.config import ModelConfig
from pararnn.synthetic.models import build_synthetic_model, synthetic_config
from pararnn.synthetic.tasks import get_task

SMALL_MAMBA = dict(mamba_d_state=16, mamba_headdim=16, mamba_chunk=8)


def test_preset_without_a_size_takes_width_and_depth():
    cfg = preset("paragru", d_model=96, n_layers=3, rnn_heads=3)
    assert (cfg.d_model, cfg.n_layers, cfg.rnn_heads) == (96, 3, 3)
    assert preset("transformer", "nano") == preset("transformer", d_model=64, n_layers=2)
    with pytest.raises(ValueError, match="needs n_layers"):
        preset("paragru", d_model=64)
    with pytest.raises(ValueError, match="needs d_model and n_layers"):
        preset("paragru")


@pytest.mark.parametrize("model", MODELS)
def test_mlp_hidden_zero_builds_a_mixer_only_block(model):
    torch.manual_seed(0)
    lm = build_model(preset(model, "nano", vocab_size=32, mlp_hidden=0, **SMALL_MAMBA))
    with_mlp = build_model(preset(model, "nano", vocab_size=32, mlp_hidden=16, **SMALL_MAMBA))
    for block in lm.blocks:
        assert block.mlp is None and block.norm2 is None
    # exactly the SwiGLU (3 * d * hidden) and its norm (d) per layer are gone
    assert with_mlp.num_params() - lm.num_params() == 2 * (3 * 64 * 16 + 64)
    idx = torch.randint(0, 32, (2, 12))
    loss = lm(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in lm.parameters())


def test_untied_head_has_its_own_output_size():
    torch.manual_seed(0)
    lm = build_model(preset("paragru", "nano", vocab_size=10, tied_head=False, output_size=7))
    assert lm.head.weight.shape == (7, 64)
    assert lm(torch.randint(0, 10, (2, 5))).shape == (2, 5, 7)
    tied = build_model(preset("paragru", "nano", vocab_size=10))
    assert tied.head is None and lm.num_params() - tied.num_params() == 7 * 64
    with pytest.raises(ValueError, match="needs tied_head=False"):
        preset("paragru", "nano", vocab_size=10, output_size=7)
    with pytest.raises(ValueError, match="mlp_hidden must be an integer >= 0 or None"):
        ModelConfig(mlp_hidden=-1)


def test_mixer_factory_is_exported():
    from pararnn.models import __all__ as exported
    from pararnn.models.transformer import Attention
    assert "mixer_factory" in exported and mixer_factory("transformer") is Attention


@pytest.mark.parametrize("name", ["parity", "modcount", "s5"])
def test_counting_tasks_get_the_bare_cell(name):
    torch.manual_seed(0)
    bare = build_synthetic_model(get_task(name), "paragru").blocks[0]
    assert bare.mixer.conv is None and bare.mixer.norm is None and bare.scale1 is None
    assert bare.mixer.rnn.cell.recurrent_clip is None and bare.mlp is None
    assert bool((bare.mixer.rnn.cell.bias[0] == 0).all())  # the paper's init: no chrono memory gate


@pytest.mark.parametrize("name", ["mqar", "khop"])
def test_recall_tasks_get_the_paper_block_with_a_long_memory_gate(name):
    torch.manual_seed(0)
    full = build_synthetic_model(get_task(name), "paralstm").blocks[0]
    assert full.mixer.conv is not None and full.mixer.norm is not None and full.scale1 is not None
    assert full.mixer.rnn.cell.recurrent_clip == 0.9 and full.mlp is None
    assert synthetic_config(get_task(name), "paralstm").rnn_init == "paper"
    # chrono init: LSTM forget gate f = 1 - 1/tau with tau in [2, 64] steps
    f = torch.sigmoid(full.mixer.rnn.cell.bias[0].detach().double())
    tau = 1 / (1 - f)
    assert float(tau.min()) >= 2 - 1e-9 and float(tau.max()) <= 64 + 1e-9 and float(tau.max()) > 32
    gru = build_synthetic_model(get_task(name), "paragru").blocks[0].mixer.rnn.cell
    z = torch.sigmoid(gru.bias[0].detach().double())  # GRU update gate z = 1/tau: small, keeps h
    assert float(z.max()) <= 0.5 + 1e-9 and float(z.min()) >= 1 / 64 - 1e-9


@pytest.mark.parametrize("model", MODELS)
def test_paper_models_have_width_64_state_64_four_heads(model):
    task = get_task("mqar")
    cfg = synthetic_config(task, model)
    assert (cfg.d_model, cfg.n_layers, cfg.mlp_hidden, cfg.tied_head) == (64, 1, 0, False)
    assert (cfg.vocab_size, cfg.output_size) == (task.vocab_size, task.num_classes)
    lm = build_model(cfg)
    mixer = lm.blocks[0].mixer
    if model in ("paragru", "paralstm"):
        assert mixer.rnn.hidden_size == 64 and mixer.rnn.projection.num_heads == 4
    elif model == "transformer":
        assert mixer.n_heads == 4
    else:
        assert mixer.d_state == 64 and mixer.nheads == 4
    assert lm(torch.randint(0, task.vocab_size, (2, 30))).shape == (2, 30, task.num_classes)


def test_block_choice_overrides_the_papers():
    assert synthetic_config(get_task("parity"), "paragru", block="paper").conv_kernel == 4
    bare = synthetic_config(get_task("khop"), "paragru", block="bare")
    assert (bare.conv_kernel, bare.gated_norm, bare.residual_scale, bare.recurrent_clip) == (0, False, False, None)
    with pytest.raises(ValueError, match="block must be one of auto, paper, bare"):
        synthetic_config(get_task("khop"), "paragru", block="full")
