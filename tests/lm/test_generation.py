"""The one generation path: static in-place decode buffers == dynamic caches, sampling,
stop tokens, the compiled decode step, CUDA graphs (GPU), bench-decode."""

import json
import warnings

import pytest
import torch

from pararnn.cli import main
from pararnn.generation import GREEDY, Generator, SamplingConfig, autocast_copy
from pararnn.models import MODELS

from test_models import VARIANTS, small_model

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("model,block,options", [(m, b, {}) for m, b in VARIANTS]
                         + [("mamba2", "standard", {"mamba_ngroups": 2})])
def test_static_decode_equals_dynamic_caches(model, block, options):
    """Prefill, then single tokens through the static buffers (eager): the logits of the
    dynamic caches, step after step."""
    lm = small_model(model, block, **options).float()
    idx = torch.randint(0, 64, (2, 9))
    generator = Generator(lm)
    assert not generator.cuda_graph
    static_logits = [generator.prefill(idx, max_len=20)]
    caches = lm.new_caches()
    with torch.no_grad():
        dynamic_logits = [lm(idx, caches=caches, last_only=True)[:, -1]]
        for token in torch.randint(0, 64, (8, 2)):
            static_logits.append(generator.step(token).clone())
            dynamic_logits.append(lm(token[:, None], caches=caches)[:, -1])
    torch.testing.assert_close(torch.stack(static_logits), torch.stack(dynamic_logits),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_greedy_tokens_are_the_argmax_of_the_parallel_forward(model):
    lm = small_model(model)
    prompt = torch.randint(0, 64, (2, 5))
    tokens = Generator(lm).generate(prompt, 6)
    assert tokens.shape == (2, 6)
    with torch.no_grad():
        seq = torch.cat([prompt, tokens], 1)
        assert torch.equal(lm(seq)[:, 4:-1].argmax(-1), tokens)


# the four mixers, and the ParaRNN block with conv window and gated norm
COMPILE_VARIANTS = [(m, "standard") for m in MODELS] + [(m, "tuned") for m in ("paragru", "paralstm")]


def _decode_logits(generator, idx, tokens):
    """Logits of the prefill of ``idx``, then of a step per row of ``tokens``, stacked."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to the eager step warns
        logits = [generator.prefill(idx, max_len=idx.shape[1] + len(tokens) + 1)]
        logits += [generator.step(token).clone() for token in tokens]
    return torch.stack(logits)


@pytest.mark.parametrize("model,block", COMPILE_VARIANTS)
def test_compiled_decode_step_equals_eager(model, block):
    """The decode step traced by ``torch.compile(fullgraph=True)`` (backend aot_eager: the
    traced, functionalised graph, without inductor's minute of CPU compile time) gives the
    eager step's logits bit for bit."""
    lm = small_model(model, block).float()
    idx, tokens = torch.randint(0, 64, (2, 7)), torch.randint(0, 64, (4, 2))
    compiled = Generator(lm, compile="aot_eager")
    assert Generator(lm).compiled is None and compiled.compiled == "aot_eager"
    assert torch.equal(_decode_logits(compiled, idx, tokens), _decode_logits(Generator(lm), idx, tokens))
    assert compiled.compiled == "aot_eager"


def test_reserve_compiles_the_step_before_decoding_is_timed():
    """Without a CUDA graph the compiled step used to compile in the first decode step, which
    `pararnn generate` times (1.4 against 390 tokens/s on a CPU): reserve runs it once, and
    decoding after it still equals the eager step's."""
    lm = small_model("paragru", "standard").float()
    generator = Generator(lm, compile="aot_eager")
    calls = []
    step = generator._compiled_step
    generator._compiled_step = lambda: calls.append(1) or step()
    generator.reserve(2, 12)
    assert calls == [1]
    idx, tokens = torch.randint(0, 64, (2, 7)), torch.randint(0, 64, (4, 2))
    assert torch.equal(_decode_logits(generator, idx, tokens), _decode_logits(Generator(lm), idx, tokens))


def test_compiled_decode_step_under_autocast_and_new_batch_sizes():
    """Under bf16 autocast too, and after a recompilation for a second batch size."""
    lm = small_model("paragru", "tuned").float()
    eager = Generator(lm, dtype=torch.bfloat16)
    compiled = Generator(lm, dtype=torch.bfloat16, compile="aot_eager")
    for batch in (1, 3):
        idx, tokens = torch.randint(0, 64, (batch, 6)), torch.randint(0, 64, (3, batch))
        assert torch.equal(_decode_logits(compiled, idx, tokens), _decode_logits(eager, idx, tokens))
    assert compiled.compiled == "aot_eager"


def test_failed_compilation_warns_once_and_decodes_eagerly():
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    lm = small_model("paragru", "tuned").float()
    idx, tokens = torch.randint(0, 64, (2, 5)), torch.randint(0, 64, (4, 2))
    expected = Generator(lm).generate(idx, 6)
    generator = Generator(lm, compile=broken_backend)
    with pytest.warns(RuntimeWarning, match="torch.compile of the decode step failed.*no compiler here") as caught:
        tokens = generator.generate(idx, 6)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert generator.compiled is None and torch.equal(tokens, expected)


def test_decode_calls_the_cell_step_and_leaves_the_layer_mode_alone(monkeypatch):
    lm = small_model("paralstm")
    layers = [block.mixer.rnn for block in lm.blocks]
    for layer in layers:
        layer.mode = "parallel"
    generator = Generator(lm)
    generator.prefill(torch.randint(0, 64, (1, 4)), max_len=8)

    def no_solve(*args, **kwargs):
        raise AssertionError("a decode step ran the layer's solver")

    for layer in layers:
        monkeypatch.setattr(layer, "forward", no_solve)
    generator.step(torch.tensor([3]))
    assert all(layer.mode == "parallel" for layer in layers)


def test_seeded_sampling_is_reproducible():
    lm = small_model("paragru").float()
    prompt = torch.randint(0, 64, (3, 4))
    sampling = SamplingConfig(temperature=1.3, top_k=20, top_p=0.9)
    draws = [Generator(lm).generate(prompt, 10, sampling, generator=torch.Generator().manual_seed(s))
             for s in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert ((draws[0] >= 0) & (draws[0] < 64)).all()


def test_stop_tokens_end_each_row():
    lm = small_model("transformer")
    prompt = torch.randint(0, 64, (2, 4))
    free = Generator(lm).generate(prompt, 12)
    stops = {int(free[0, 2]), int(free[1, 2])}  # every row stops at step 2 at the latest
    stopped = Generator(lm).generate(prompt, 12, stop_tokens=stops)
    firsts = []
    for row, full in zip(stopped, free):
        first = min(i for i, t in enumerate(full.tolist()) if t in stops)
        firsts.append(first)
        # the row follows the free run up to its stop token, then repeats that token
        assert torch.equal(row[:first + 1], full[:first + 1]) and (row[first:] == full[first]).all()
    assert stopped.shape[1] == max(firsts) + 1  # the stream ends once every row has stopped


def test_autocast_copy_computes_what_autocast_does():
    lm = small_model("paragru", "paper").float()
    idx = torch.randint(0, 64, (2, 7))
    copy = autocast_copy(lm, torch.bfloat16)
    assert copy.blocks[0].mixer.in_proj.weight.dtype == torch.bfloat16
    assert lm.blocks[0].mixer.in_proj.weight.dtype == torch.float32
    assert copy.embed.weight is lm.embed.weight  # everything else is shared
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(copy(idx), lm(idx))


def test_bad_arguments():
    lm = small_model("transformer")
    generator = Generator(lm)
    for temperature in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number"):
            SamplingConfig(temperature=temperature)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError, match="top_k"):
        SamplingConfig(top_k=0)
    with pytest.raises(ValueError, match="max_len must exceed"):
        generator.prefill(torch.zeros(1, 5, dtype=torch.long), max_len=5)
    with pytest.raises(ValueError, match="idx must be"):
        generator.prefill(torch.zeros(5, dtype=torch.long), max_len=9)
    with pytest.raises(ValueError, match="max_len=6 is shorter"):
        generator.generate(torch.zeros(1, 5, dtype=torch.long), 3, max_len=6)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generator.generate(torch.zeros(1, 5, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="cuda_graph=True"):
        Generator(lm, cuda_graph=True)  # the model is on the CPU


def test_bench_decode_writes_rows_with_the_bandwidth_bound(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench-decode", "--models", "paragru,transformer", "--size", "nano", "--contexts", "16,64",
                 "--batch-sizes", "1,2", "--new-tokens", "3", "--bandwidth", "1e11", "--device", "cpu",
                 "--json", str(out)])
    assert code == 0 and "bound tok/s" in capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert report["bandwidth"] == 1e11 and len(rows) == 8
    for row in rows:
        assert row["decode_tok_s"] > 0 and row["bytes_per_step"] > 0
        assert row["bound_tok_s"] == pytest.approx(row["batch"] * 1e11 / row["bytes_per_step"])
    state = {(r["model"], r["context"]): r["state_mib"] for r in rows if r["batch"] == 1}
    assert state[("paragru", 16)] == state[("paragru", 64)]  # O(1) state
    assert state[("transformer", 64)] > state[("transformer", 16)]  # the KV cache grows
    assert main(["bench-decode", "--models", "lstm", "--device", "cpu"]) == 2


def test_bench_decode_measures_several_blocks_of_one_model_in_one_run(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench-decode", "--models", "paragru:standard,paragru,paragru:tuned", "--size", "nano",
                 "--contexts", "16", "--batch-sizes", "1", "--new-tokens", "2", "--device", "cpu",
                 "--json", str(out)])
    assert code == 0
    rows = {r["model"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["paragru:standard", "paragru", "paragru:tuned"]
    # the tuned block's state is twice as wide as the standard block's (rnn_expand=2)
    assert rows["paragru:tuned"]["state_mib"] > rows["paragru:standard"]["state_mib"]
    assert "paragru:tuned" in capsys.readouterr().out
    assert main(["bench-decode", "--models", "paragru:wide", "--device", "cpu"]) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("model", MODELS)
def test_cuda_graph_greedy_tokens_equal_eager(model, monkeypatch):
    from pararnn.models import build_model, preset
    # float32 below means float32: cuDNN would run Mamba2's conv in TF32 by default
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    lm = build_model(preset(model, "tiny")).cuda().eval()
    prompt = torch.randint(0, 256, (3, 37), device="cuda")
    graph = Generator(lm, dtype=torch.bfloat16, compile=False)
    eager = Generator(lm, dtype=torch.bfloat16, cuda_graph=False, compile=False)
    assert graph.cuda_graph and not eager.cuda_graph
    tokens = graph.generate(prompt, 40)
    assert torch.equal(tokens, eager.generate(prompt, 40))
    assert torch.equal(graph.generate(prompt, 40), tokens)  # a second call replays the same graph
    fp32 = Generator(lm, compile=False)  # float32: the graph reproduces the parallel forward's argmax
    tokens = fp32.generate(prompt, 20, GREEDY)
    with torch.no_grad():
        logits = lm(torch.cat([prompt, tokens], 1))[:, 36:-1].float()
    top2 = logits.topk(2, -1).values
    clear = (top2[..., 0] - top2[..., 1]) > 1e-3  # ties within float32 noise may flip
    assert torch.equal(logits.argmax(-1)[clear], tokens[clear])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("model", MODELS)
def test_inductor_compiled_graph_step_equals_eager(model, monkeypatch):
    """The default CUDA decode step (inductor, then a CUDA graph) in float32: the eager
    step's logits to rounding (inductor fuses and reorders), with no fallback warning."""
    from pararnn.models import build_model, preset
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    lm = build_model(preset(model, "tiny", block="auto")).cuda().eval()
    prompt = torch.randint(0, 256, (3, 21), device="cuda")
    tokens = torch.randint(0, 256, (12, 3), device="cuda")
    compiled = Generator(lm)
    assert compiled.compiled == "inductor" and compiled.cuda_graph
    expected = _decode_logits(Generator(lm, cuda_graph=False, compile=False), prompt, tokens)
    torch.testing.assert_close(_decode_logits(compiled, prompt, tokens), expected, atol=1e-4, rtol=1e-4)
    assert compiled.compiled == "inductor"


@pytest.mark.parametrize("train_config, size", [({"size": "nano"}, "nano"), (None, None)])
def test_bench_decode_of_a_checkpoint_records_its_size(tmp_path, train_config, size):
    """The rows of a checkpoint's benchmark carry the size it was trained at (they carried
    --size's default, "tiny"), or None for a checkpoint not written by `pararnn train`."""
    from pararnn.data.tokenizers import ByteTokenizer
    from pararnn.models import build_model, preset
    from pararnn.train.checkpoint import save_checkpoint
    lm = build_model(preset("paragru", "nano", vocab_size=257))
    meta = {"step": 0, "model": "paragru", "model_config": lm.cfg.to_dict()}
    if train_config is not None:
        meta["train_config"] = train_config
    save_checkpoint(tmp_path / "run", 0, lm.state_dict(), {}, meta, ByteTokenizer())
    out = tmp_path / "bench.json"
    assert main(["bench-decode", "--checkpoint", str(tmp_path / "run"), "--contexts", "8",
                 "--batch-sizes", "1", "--new-tokens", "2", "--device", "cpu", "--json", str(out)]) == 0
    assert [r["size"] for r in json.loads(out.read_text())["rows"]] == [size]
