"""Language models: sizes, shapes, causality, cached decoding == parallel forward."""

import pytest
import torch
import torch.nn.functional as F

from pararnn.models import MODELS, SIZES, build_model, preset
from pararnn.models.config import HYBRID_ATTN_EVERY
from pararnn.models.lm import GatedRMSNorm, cache_tensors, sample
from pararnn.models.mamba2 import ssd_backend, ssd_chunked, ssd_sequential

# (model, block) pairs: every model, and the paper's and the tuned block options
# for the ParaRNN mixers
VARIANTS = [(m, "standard") for m in MODELS] + [(m, b) for b in ("paper", "tuned")
                                                for m in ("paragru", "paralstm")]
# with hybrids (attn_every=2 at nano: a ParaRNN block, then an attention block)
WITH_HYBRIDS = [(m, b, {}) for m, b in VARIANTS] + [
    ("paragru", "standard", {"attn_every": 2}), ("paralstm", "paper", {"attn_every": 2}),
    ("paragru", "tuned", {"attn_every": 2})]


def small_model(model, block="standard", **overrides):
    torch.manual_seed(0)
    fields = dict(vocab_size=64, mamba_d_state=16, mamba_headdim=16, mamba_chunk=8)
    fields.update(overrides)
    return build_model(preset(model, "nano", block=block, **fields)).double().eval()


# blocks' parameters of each preset (the same for every model up to the matched MLP width)
EXPECTED_BLOCK_PARAMS = {"tiny": 3.2e6, "small": 25.7e6, "medium": 85e6,
                         "400m": 405e6, "1b": 1.01e9, "3b": 3.0e9, "7b": 6.85e9}


@pytest.mark.parametrize("size", [s for s in SIZES if s != "nano"])  # nano: smoke tests only
def test_parameter_counts_match_across_models(size):
    counts = {}
    for model in MODELS:
        with torch.device("meta"):
            counts[model] = build_model(preset(model, size)).num_params(non_embedding=True)
    reference = counts["transformer"]
    assert abs(reference / EXPECTED_BLOCK_PARAMS[size] - 1) < 0.05, counts
    for model, n in counts.items():
        assert abs(n / reference - 1) < 0.03, (model, counts)


@pytest.mark.parametrize("block", ["tuned", "hybrid"])
@pytest.mark.parametrize("size", [s for s in SIZES if s not in ("nano", "tiny")])
def test_tuned_and_hybrid_blocks_keep_the_parameter_count(size, block):
    """The ParaRNN blocks with a state 2x d_model narrow their SwiGLU to stay within 1.5% of
    the Transformer at every size from small up (tiny: the SwiGLU would shrink to 16)."""
    with torch.device("meta"):
        reference = build_model(preset("transformer", size, block="auto")).num_params()
        for model in ("paragru", "paralstm"):
            lm = build_model(preset(model, size, block=block))
            assert abs(lm.num_params() / reference - 1) < 0.015, (model, size)
            assert all(b.mlp is not None for b in lm.blocks)


def test_hybrid_block_puts_one_attention_block_in_eight():
    for model in ("paragru", "paralstm"):
        for size in SIZES:
            cfg = preset(model, size, block="hybrid")
            kinds = cfg.block_models
            if cfg.n_layers < HYBRID_ATTN_EVERY:  # too few blocks: purely recurrent
                assert cfg == preset(model, size, block="tuned") and "transformer" not in kinds
                continue
            assert cfg == preset(model, size, block="tuned", attn_every=HYBRID_ATTN_EVERY)
            assert [i for i, k in enumerate(kinds) if k == "transformer"] == \
                list(range(HYBRID_ATTN_EVERY - 1, cfg.n_layers, HYBRID_ATTN_EVERY))
            assert kinds.count(model) == cfg.n_layers - cfg.n_layers // HYBRID_ATTN_EVERY
        # an explicit attn_every wins: 0 gives the purely recurrent tuned model
        assert preset(model, "small", block="hybrid", attn_every=0) == preset(model, "small", block="tuned")
        assert preset(model, "small", block="hybrid", attn_every=4).block_models.count("transformer") == 2
    assert preset("transformer", "small", block="hybrid") == preset("transformer", "small", block="tuned")


def test_auto_block_is_hybrid_for_the_rnns_and_standard_for_the_baselines():
    for model in ("paragru", "paralstm"):
        cfg = preset(model, "small", block="auto")
        assert (cfg.conv_kernel, cfg.gated_norm, cfg.residual_scale) == (4, True, True)
        assert (cfg.rnn_hidden, cfg.rnn_memory) == (2 * cfg.d_model, 64.0)
        assert cfg == preset(model, "small", block="hybrid")
        assert cfg.attn_every == HYBRID_ATTN_EVERY
        paper = preset(model, "small", block="paper")
        assert (paper.rnn_hidden, paper.rnn_memory) == (paper.d_model, 0.0)
        # an explicit choice wins over the tuned defaults
        assert preset(model, "small", block="tuned", rnn_expand=1).rnn_hidden == cfg.d_model
        assert preset(model, "small", block="tuned", rnn_hidden=768).rnn_hidden == 768
        chosen = preset(model, "small", block="tuned", rnn_forget_bias=2.0)
        assert (chosen.rnn_memory, chosen.rnn_forget_bias) == (0.0, 2.0)
    for model in ("transformer", "mamba2"):
        assert preset(model, "small", block="auto") == preset(model, "small", block="standard")
    from pararnn.train import TrainConfig
    assert TrainConfig().block == "auto"
    with pytest.raises(ValueError, match="unknown block"):
        preset("paragru", "small", block="fancy")


def test_sizes_command_prints_counts(capsys):
    from pararnn.cli import main
    assert main(["sizes"]) == 0
    out = capsys.readouterr().out
    assert "7b" in out and "paragru" in out and "M" in out


@pytest.mark.parametrize("model,block,options", WITH_HYBRIDS)
def test_shapes_and_loss(model, block, options):
    lm = small_model(model, block, **options).float().train()
    idx = torch.randint(0, 64, (3, 20))
    assert lm(idx).shape == (3, 20, 64)
    loss = lm(idx, idx)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(p.grad is not None for p in lm.parameters())


@pytest.mark.parametrize("model,block,options", WITH_HYBRIDS)
def test_causality(model, block, options):
    lm = small_model(model, block, **options)
    idx = torch.randint(0, 64, (2, 24))
    changed = idx.clone()
    t = 13
    changed[:, t] = (changed[:, t] + 7) % 64
    with torch.no_grad():
        a, b = lm(idx), lm(changed)
    assert torch.equal(a[:, :t], b[:, :t]) or torch.allclose(a[:, :t], b[:, :t], atol=1e-12, rtol=0)
    assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("model,block", VARIANTS)
def test_cached_decoding_equals_parallel_forward(model, block):
    """Prefill a prompt, then feed tokens one at a time (and a chunk of several): the
    logits equal those of one parallel forward over the same tokens."""
    lm = small_model(model, block)
    idx = torch.randint(0, 64, (2, 21))
    with torch.no_grad():
        full = lm(idx)
        caches = lm.new_caches()
        pieces = [lm(idx[:, :9], caches=caches)]
        for t in range(9, 15):
            pieces.append(lm(idx[:, t:t + 1], caches=caches))
        pieces.append(lm(idx[:, 15:], caches=caches))  # a second multi-token chunk
    stepped = torch.cat(pieces, dim=1)
    torch.testing.assert_close(stepped, full, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("model,block", VARIANTS)
def test_decode_state_size(model, block):
    """ParaRNN and Mamba2 decode states keep the same memory alive whatever the context
    (counted by storage: a view of all T states would pin them); the KV cache grows."""
    lm = small_model(model, block)

    def storage_bytes(caches):
        return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for t in cache_tensors(caches)}.values())

    sizes = []
    for context in (16, 300):
        caches = lm.new_caches()
        with torch.no_grad():
            lm(torch.randint(0, 64, (1, context)), caches=caches, last_only=True)  # prefill
        sizes.append(storage_bytes(caches))
    if model == "transformer":
        assert sizes[1] > sizes[0]
    else:
        assert sizes[1] == sizes[0]


def test_last_only_logits():
    lm = small_model("transformer")
    idx = torch.randint(0, 64, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(lm(idx, last_only=True), lm(idx)[:, -1:])


def test_generate_yields_tokens():
    lm = small_model("paragru").float()
    gen = torch.Generator().manual_seed(0)
    tokens = list(lm.generate(torch.randint(0, 64, (2, 5)), 7, top_k=10, generator=gen))
    assert len(tokens) == 7 and all(t.shape == (2,) for t in tokens)
    greedy = list(lm.generate(torch.zeros(1, 3, dtype=torch.long), 5, temperature=0))
    with torch.no_grad():  # greedy decoding reproduces argmax of the parallel forward
        seq = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.stack(greedy, 1)], 1)
        assert torch.equal(lm(seq)[:, 2:-1].argmax(-1), seq[:, 3:])


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]])
    for _ in range(5):
        assert int(sample(logits, top_k=1)) == 1
        assert int(sample(logits, top_p=0.01)) == 1
        assert int(sample(logits, top_k=2)) in (1, 2)
    assert int(sample(logits, temperature=0)) == 1


@pytest.mark.parametrize("length,chunk", [(1, 4), (13, 4), (32, 8), (17, 64)])
def test_ssd_chunked_matches_recurrence(length, chunk):
    g = torch.Generator().manual_seed(length)
    b, h, p, n = 2, 3, 4, 5
    x = torch.randn(b, length, h, p, generator=g, dtype=torch.float64)
    dt = torch.rand(b, length, h, generator=g, dtype=torch.float64)
    A = -torch.rand(h, generator=g, dtype=torch.float64) * 3
    B = torch.randn(b, length, h, n, generator=g, dtype=torch.float64)
    C = torch.randn(b, length, h, n, generator=g, dtype=torch.float64)
    s0 = torch.randn(b, h, p, n, generator=g, dtype=torch.float64)
    y1, f1 = ssd_chunked(x, dt, A, B, C, chunk, s0)
    y2, f2 = ssd_sequential(x, dt, A, B, C, s0)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(f1, f2)


def test_ssd_backend_on_cpu_is_torch():
    assert ssd_backend(torch.device("cpu")) == "torch"


def test_bad_configs():
    with pytest.raises(ValueError, match="unknown model"):
        preset("lstm", "tiny")
    with pytest.raises(ValueError, match="unknown size"):
        preset("paragru", "huge")
    with pytest.raises(ValueError, match="rnn_heads"):
        preset("paragru", "nano", rnn_heads=3)


@pytest.mark.parametrize("field,value,match", [
    ("gated_norm", "False", "gated_norm must be True or False"),  # a string was truthy
    ("residual_scale", 1, "residual_scale must be True or False"),
    ("n_layers", True, "n_layers must be a positive integer"),  # True was 1
    ("conv_kernel", 2.5, "conv_kernel must be an integer >= 0"),
    ("rnn_forget_bias", "abc", "rnn_forget_bias must be a number >= 0"),
    ("rope_base", 0.0, "rope_base must be a positive finite number"),
    ("norm_eps", -1e-5, "norm_eps must be a positive finite number"),
    ("init_std", float("inf"), "init_std must be a positive finite number"),
    ("recurrent_clip", 0, "recurrent_clip must be a positive finite number or None"),
    ("mamba_ngroups", 0, "mamba_ngroups must be a positive integer"),
    ("mamba_d_state", 0, "mamba_d_state must be a positive integer"),
])
def test_bad_option_values_are_named(field, value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        preset("paragru", "nano", **{field: value})


def test_each_mixer_checks_only_its_own_options():
    """A width that only another mixer cannot take is no error (the Transformer's head split
    refused a ParaGRU, Mamba2's head size a Transformer); a model's own mixer still checks."""
    preset("transformer", d_model=80, n_layers=2)  # mamba_expand * 80 is no multiple of 64
    preset("paragru", d_model=224, n_layers=2)  # 3 attention heads of odd size
    preset("transformer", d_model=64, n_layers=2, rnn_heads=3)
    with pytest.raises(ValueError, match="heads of even size"):
        preset("paragru", d_model=224, n_layers=2, attn_every=2)  # a hybrid has attention
    with pytest.raises(ValueError, match="mamba_ngroups=3 must divide the 2 heads"):
        preset("mamba2", "nano", mamba_ngroups=3)


def test_hybrid_layout_follows_an_n_layers_override():
    """The hybrid block's attention blocks follow the layers the model has, not its size's."""
    assert preset("paragru", "small", n_layers=2).attn_every == 0  # it raised: 8 exceeds 2
    assert preset("paragru", "nano", block="hybrid", n_layers=8).block_models.count("transformer") == 1


# ParaRNN mixer options for the ablations, each on top of the block it is meant for
RNN_OPTIONS = [
    ("paragru", "standard", dict(rnn_in_proj=False)),
    ("paralstm", "paper", dict(rnn_in_proj=False)),  # conv on d_model + own gate projection
    ("paragru", "paper", dict(rnn_expand=2, rnn_heads=1)),
    ("paralstm", "standard", dict(rnn_expand=2)),
    ("paragru", "paper", dict(rnn_init="paper", rnn_forget_bias=2.0)),
    ("paralstm", "paper", dict(rnn_init="paper", rnn_forget_bias=2.0, rnn_heads=1)),
    ("paragru", "paper", dict(rnn_output="gate")),
    ("paralstm", "paper", dict(rnn_output="norm", rnn_in_proj=False)),
    ("paragru", "standard", dict(rnn_output="gated_norm", rnn_in_proj=False, init_std=0.05)),
]


@pytest.mark.parametrize("model,block,options", RNN_OPTIONS)
def test_rnn_options_shapes_causality_and_decoding(model, block, options):
    lm = small_model(model, block, **options)
    idx = torch.randint(0, 64, (2, 17))
    loss = lm.float().train()(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in lm.parameters())
    lm.double().eval()
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 5) % 64
    with torch.no_grad():
        full, other = lm(idx), lm(changed)
        caches = lm.new_caches()
        pieces = [lm(idx[:, :6], caches=caches)] + [lm(idx[:, t:t + 1], caches=caches) for t in range(6, 17)]
    assert full.shape == (2, 17, 64)
    torch.testing.assert_close(other[:, :9], full[:, :9], atol=1e-12, rtol=0)
    assert not torch.allclose(other[:, 9:], full[:, 9:])
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("options", [dict(rnn_in_proj=False), dict(rnn_expand=2), dict(rnn_heads=1),
                                     dict(rnn_expand=2, rnn_in_proj=False)])
@pytest.mark.parametrize("block", ["standard", "paper"])
def test_rnn_options_keep_the_parameter_count(options, block):
    with torch.device("meta"):
        reference = build_model(preset("transformer", "small", block=block)).num_params(non_embedding=True)
        for model in ("paragru", "paralstm"):
            n = build_model(preset(model, "small", block=block, **options)).num_params(non_embedding=True)
            assert abs(n / reference - 1) < 0.03, (model, options, n, reference)


def test_rnn_shapes_follow_the_options():
    mixer = small_model("paragru", "paper", rnn_in_proj=False, rnn_expand=2).blocks[0].mixer
    d = 64
    assert mixer.in_proj is None and mixer.gate_proj.weight.shape == (2 * d, d)
    assert mixer.conv.weight.shape[0] == d  # the conv runs on the block input
    assert mixer.rnn.input_size == d and mixer.rnn.hidden_size == 2 * d
    assert mixer.out_proj.weight.shape == (d, 2 * d)
    default = small_model("paragru").blocks[0].mixer
    assert default.in_proj.weight.shape == (d, d) and default.rnn.input_size == d


@pytest.mark.parametrize("model,sign", [("paragru", -1.0), ("paralstm", 1.0)])
def test_forget_bias_starts_the_state_long_memory(model, sign):
    for block in small_model(model, rnn_forget_bias=3.0).blocks:
        bias = block.mixer.rnn.cell.bias
        assert torch.all(bias[0] == sign * 3.0) and torch.all(bias[1:] == 0)
    assert all(torch.all(b.mixer.rnn.cell.bias == 0) for b in small_model(model).blocks)


@pytest.mark.parametrize("model", ["paragru", "paralstm"])
def test_memory_init_spreads_the_memory_gate(model):
    """rnn_memory=M: the initial time constant 1 / share of new input per step, with share
    sigma(b_z) (GRU) or 1 - sigma(b_f) (LSTM), is uniform in [2, M] across channels; the
    other gates' biases stay 0."""
    torch.manual_seed(0)
    lm = build_model(preset(model, "small", n_layers=1, rnn_memory=64))
    bias = lm.blocks[0].mixer.rnn.cell.bias.detach().double()
    share = torch.sigmoid(bias[0]) if model == "paragru" else 1 - torch.sigmoid(bias[0])
    tau = 1 / share
    assert tau.min() >= 2 * (1 - 1e-5) and tau.max() <= 64 * (1 + 1e-5)
    assert abs(tau.mean().item() - 33) < 2 and tau.std() > 15  # uniform: mean 33, std 17.9
    assert torch.all(bias[1:] == 0)
    for bad in (True, 1.5, -3):
        with pytest.raises(ValueError, match="rnn_memory"):
            preset(model, "nano", rnn_memory=bad)


def test_paper_init_scales_the_input_projections():
    """gpt2: N(0, 0.02) on maps that read the residual stream; paper: variance 1/fan-in."""
    torch.manual_seed(0)
    for init, expected in (("gpt2", 0.02 ** 2), ("paper", 1 / 512)):
        with torch.no_grad():
            lm = build_model(preset("paragru", "small", rnn_in_proj=False, rnn_heads=1, rnn_init=init,
                                    n_layers=1))
        weight = lm.blocks[0].mixer.rnn.projection.weight
        assert abs(weight.var().item() / expected - 1) < 0.05, (init, weight.var().item())


@pytest.mark.parametrize("output,norm,gated", [("none", None, False), ("norm", "RMSNorm", False),
                                               ("gate", None, True), ("gated_norm", "GatedRMSNorm", True)])
def test_rnn_output_stages(output, norm, gated):
    mixer = small_model("paragru", "paper", rnn_output=output).blocks[0].mixer
    assert type(mixer.norm).__name__ == (norm or "NoneType") and mixer.gated == gated
    assert mixer.in_proj.weight.shape[0] == (2 if gated else 1) * 64
    y = torch.randn(2, 5, 64, dtype=torch.float64)
    gate = torch.randn(2, 5, 64, dtype=torch.float64)
    rms = y / y.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    expected = {"none": y, "norm": rms, "gate": y * F.silu(gate), "gated_norm": rms * F.silu(gate)}[output]
    mixer.rnn.forward = lambda u, state=None: (y, y[:, -1])  # isolate the output stage
    mixer.in_proj.forward = lambda x: torch.cat([x, gate], -1) if gated else x
    mixer.conv = None
    mixer.out_proj.forward = lambda h: h
    torch.testing.assert_close(mixer(torch.zeros(2, 5, 64, dtype=torch.float64)), expected)
    # the paper block's default output stage is the gated norm; the standard block's none
    assert isinstance(small_model("paragru", "paper").blocks[0].mixer.norm, GatedRMSNorm)
    assert small_model("paragru").blocks[0].mixer.norm is None


def test_init_std_scales_the_embedding_and_projections():
    torch.manual_seed(0)
    lm = build_model(preset("paragru", "small", n_layers=1, init_std=0.05))
    assert abs(lm.embed.weight.std().item() / 0.05 - 1) < 0.05
    assert abs(lm.blocks[0].mlp.gate_up.weight.std().item() / 0.05 - 1) < 0.05
    with pytest.raises(ValueError, match="init_std"):
        preset("paragru", "nano", init_std=0)
    with pytest.raises(ValueError, match="rnn_output"):
        preset("paragru", "nano", rnn_output="gated")


def test_model_does_not_change_the_callers_config():
    cfg = preset("paragru", "nano")
    lm = build_model(cfg)
    assert cfg.mlp_hidden is None and lm.cfg.mlp_hidden is not None


def test_bad_rnn_options():
    with pytest.raises(ValueError, match="rnn_expand"):
        preset("paragru", "nano", rnn_expand=0)
    with pytest.raises(ValueError, match="contradicts"):
        preset("paragru", "nano", rnn_expand=2, rnn_hidden=64)
    with pytest.raises(ValueError, match="rnn_init"):
        preset("paragru", "nano", rnn_init="xavier")
    with pytest.raises(ValueError, match="rnn_forget_bias"):
        preset("paragru", "nano", rnn_forget_bias=-1.0)
    with pytest.raises(TypeError, match="rnn_in_proj"):
        preset("paragru", "nano", rnn_in_proj="no")


def test_mamba_kernel_import_leaves_no_stub_package(tmp_path, monkeypatch):
    """An installed mamba_ssm whose __init__ fails (no CUDA extension): the SSD module is
    loaded through a stand-in package that is gone again afterwards."""
    import sys

    from pararnn.models.mamba2 import _import_mamba_ssd
    triton_dir = tmp_path / "mamba_ssm" / "ops" / "triton"
    triton_dir.mkdir(parents=True)
    (tmp_path / "mamba_ssm" / "__init__.py").write_text("raise ImportError('no CUDA extension')\n")
    (tmp_path / "mamba_ssm" / "ops" / "__init__.py").write_text("")
    (triton_dir / "__init__.py").write_text("")
    (triton_dir / "helper.py").write_text("SCALE = 3\n")
    (triton_dir / "ssd_combined.py").write_text(
        "from mamba_ssm.ops.triton.helper import SCALE\n"
        "def mamba_chunk_scan_combined(x):\n    return SCALE * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    kernel = _import_mamba_ssd()
    assert kernel(2) == 6
    assert not [m for m in set(sys.modules) - before if m.startswith("mamba_ssm")]
    with pytest.raises(ImportError, match="no CUDA extension"):
        import mamba_ssm  # noqa: F401  (the real package, untouched by the stand-in)
