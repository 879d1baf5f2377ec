"""Hybrid ParaRNN language models (``attn_every=k``): a Transformer block every k-th block
among ParaGRU/ParaLSTM blocks. Decoding, parameter matching, FLOPs, errors, and a run
through `pararnn train`, its checkpoint and the Hugging Face export (shapes, loss and
causality: tests/lm/test_models.py, with the other models)."""

import pytest
import torch

from pararnn.cli import main
from pararnn.generation import Generator
from pararnn.models import ModelConfig, build_model, preset
from pararnn.models.config import parse_model_options
from pararnn.models.flops import forward_flops_per_token
from pararnn.models.rnn_mixer import ParaRNNMixer
from pararnn.models.transformer import Attention
from pararnn.train.loop import optimizer_groups
from pararnn.train.sweep import parse_entry
from source_corpus import write_source_corpus

# both cells, and the plain, paper and tuned blocks (conv, gated norm, residual scales, wide state)
HYBRIDS = [("paragru", "standard"), ("paralstm", "paper"), ("paragru", "tuned")]


def hybrid(model="paragru", block="standard", *, attn_every=2, n_layers=3, **overrides):
    """Three blocks: ParaRNN, attention, ParaRNN (an attention block between recurrent ones)."""
    torch.manual_seed(0)
    cfg = preset(model, block=block, d_model=32, n_layers=n_layers, vocab_size=64,
                 attn_every=attn_every, **overrides)
    return build_model(cfg).double().eval()


def test_every_kth_block_is_an_attention_block():
    assert preset("paragru", "small", attn_every=4).block_models == ["paragru"] * 3 + ["transformer"] \
        + ["paragru"] * 3 + ["transformer"]
    assert preset("paralstm", "tiny").block_models == ["paralstm"] * 4
    assert [type(b.mixer) for b in hybrid().blocks] == [ParaRNNMixer, Attention, ParaRNNMixer]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("model,block", HYBRIDS)
def test_cached_decoding_equals_parallel_forward(model, block, dtype, tol):
    """A prompt in parallel, then single tokens, then a chunk: the logits of one parallel
    forward (the attention blocks' KV cache and the ParaRNN states advance together)."""
    lm = hybrid(model, block).to(dtype)
    idx = torch.randint(0, 64, (2, 21))
    with torch.no_grad():
        full = lm(idx)
        caches = lm.new_caches()
        pieces = [lm(idx[:, :9], caches=caches)]
        pieces += [lm(idx[:, t:t + 1], caches=caches) for t in range(9, 15)]
        pieces.append(lm(idx[:, 15:], caches=caches))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=tol, rtol=tol)


@pytest.mark.parametrize("model,block", HYBRIDS)
def test_static_decode_equals_dynamic_caches(model, block):
    """The Generator's in-place buffers (a KV cache for attention blocks, a state for the
    others; eager, not compiled) give the logits of the dynamic caches, step after step."""
    lm = hybrid(model, block).float()
    idx = torch.randint(0, 64, (2, 9))
    generator = Generator(lm, compile=False)
    static = [generator.prefill(idx, max_len=20)]
    caches = lm.new_caches()
    with torch.no_grad():
        dynamic = [lm(idx, caches=caches, last_only=True)[:, -1]]
        for token in torch.randint(0, 64, (8, 2)):
            static.append(generator.step(token).clone())
            dynamic.append(lm(token[:, None], caches=caches)[:, -1])
    torch.testing.assert_close(torch.stack(static), torch.stack(dynamic), atol=1e-5, rtol=1e-5)
    assert [set(c) for c in generator._caches][1] == {"k", "v", "pos"}


def block_params(lm, i):
    return sum(p.numel() for p in lm.blocks[i].parameters())


@pytest.mark.parametrize("block", ["standard", "tuned"])
@pytest.mark.parametrize("model", ["paragru", "paralstm"])
@pytest.mark.parametrize("size", ["tiny", "small"])
def test_parameter_count_matches_the_transformer(size, model, block):
    """Attention blocks are Transformer blocks (SwiGLU width and all), ParaRNN blocks those
    of the pure ParaRNN model, so a hybrid is never further from the Transformer's count
    than the pure model (the standard block at small: +2.1%, its SwiGLU width rounds up
    to a multiple of 64), and within 1.5% with the tuned (default) block."""
    with torch.device("meta"):
        transformer = build_model(preset("transformer", size, block=block))
        reference = build_model(preset("transformer", size)).num_params()  # what training compares with
        pure = build_model(preset(model, size, block=block))
        for k in (2, 4):
            lm = build_model(preset(model, size, block=block, attn_every=k))
            for i, name in enumerate(lm.cfg.block_models):
                expected = block_params(transformer if name == "transformer" else pure, i)
                assert block_params(lm, i) == expected, (k, i, name)
            off = abs(lm.num_params() / reference - 1)
            assert off <= abs(pure.num_params() / reference - 1)
            if block == "tuned":
                assert off < 0.015, (k, off)


def test_explicit_mlp_width_applies_to_every_block():
    lm = hybrid(mlp_hidden=48)
    assert lm.cfg.mlp_hidden == 48 and all(b.mlp.down.in_features == 48 for b in lm.blocks)
    assert all(b.mlp is None for b in hybrid(mlp_hidden=0).blocks)
    cfg = preset("paragru", "nano", attn_every=2)
    lm = build_model(cfg)  # two widths: the config keeps None, both follow from it on reload
    assert cfg.mlp_hidden is None and lm.cfg.mlp_hidden is None
    assert lm.blocks[0].mlp.down.in_features != lm.blocks[1].mlp.down.in_features


def test_bad_attn_every():
    for model in ("transformer", "mamba2"):
        with pytest.raises(ValueError, match="paragru or paralstm"):
            ModelConfig(model=model, attn_every=2)
    with pytest.raises(ValueError, match="attn_every=5 exceeds n_layers=4"):
        ModelConfig(n_layers=4, attn_every=5)
    with pytest.raises(ValueError, match="attn_every=1 makes every block an attention block"):
        ModelConfig(attn_every=1)  # a Transformer named paragru, at the recurrent models' LR
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="attn_every must be 0"):
            ModelConfig(attn_every=bad)


def test_option_on_the_command_line_and_in_sweep_variants():
    assert parse_model_options("attn_every=4") == {"attn_every": 4}
    entry = parse_entry("paragru+attn4=attn_every=4", "tuned")
    assert (entry.name, entry.model, entry.options) == ("paragru+attn4", "paragru", {"attn_every": 4})


def test_old_configs_without_the_field_load():
    saved = preset("paragru", "nano").to_dict()
    del saved["attn_every"]
    assert ModelConfig.from_dict(saved).attn_every == 0


def test_attention_flops_counted_for_attention_blocks_only():
    lm, pure = hybrid(), hybrid(attn_every=0)
    d, short, long = lm.cfg.d_model, 64, 8192
    growth = forward_flops_per_token(lm, long) - forward_flops_per_token(lm, short)
    assert growth == 2.0 * d * (long - short)  # one attention block of three
    assert forward_flops_per_token(pure, long) == forward_flops_per_token(pure, short)
    assert forward_flops_per_token(lm, long) > forward_flops_per_token(pure, long)


def test_weight_decay_groups_treat_attention_as_in_the_transformer():
    lm = hybrid()
    decayed, plain, recurrent = (set(map(id, g["params"])) for g in optimizer_groups(lm, lr=1e-3, weight_decay=0.1))
    attention = lm.blocks[1].mixer
    assert {id(attention.qkv.weight), id(attention.out_proj.weight)} <= decayed
    assert id(lm.blocks[1].norm1.weight) in plain
    assert id(lm.blocks[0].mixer.rnn.cell.a) in recurrent


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hybrid")
    corpus = write_source_corpus(root / "corpus")
    run = root / "run"
    assert main(["train", "--model", "paragru", "--size", "nano", "--model-options", "attn_every=2",
                 "--data", str(corpus), "--out", str(run), "--seq-len", "32", "--batch-size", "4",
                 "--max-steps", "3", "--eval-every", "3", "--ckpt-every", "3", "--eval-tokens", "128",
                 "--device", "cpu", "--no-progress"]) == 0
    return run


def test_trains_and_its_checkpoint_reloads(trained_run):
    from pararnn.train import open_checkpoint
    from pararnn.train.checkpoint import load_model
    ckpt = open_checkpoint(trained_run)
    assert ckpt.meta["step"] == 3 and ckpt.model_config.attn_every == 2
    model = load_model(ckpt, torch.device("cpu"))  # load_state_dict is strict: every weight matched
    assert [type(b.mixer) for b in model.blocks] == [ParaRNNMixer, Attention]


def test_hugging_face_export_round_trip(trained_run, tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    import pararnn.hf  # noqa: F401  (registers the model type)
    from pararnn.train import open_checkpoint
    from pararnn.train.checkpoint import load_model
    assert main(["export", "--checkpoint", str(trained_run), "--out", str(tmp_path / "hf")]) == 0
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert hf_model.config.pararnn["attn_every"] == 2
    model = load_model(open_checkpoint(trained_run), torch.device("cpu"))
    ids = torch.randint(0, 257, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits, model(ids), atol=0, rtol=0)
