"""Hugging Face transformers: export, Auto* loading, generate == `pararnn generate`, round trips."""

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import pararnn.hf  # noqa: E402,F401  (registers the model type)
from pararnn.cli import main  # noqa: E402
from pararnn.data.tokenizers import ByteTokenizer  # noqa: E402
from pararnn.hf import PararnnConfig, PararnnForCausalLM  # noqa: E402
from pararnn.models import MODELS  # noqa: E402

from checkpoints import nano_checkpoint  # noqa: E402

PROMPT = "def fö("  # a non-ASCII character: two bytes, two tokens


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    run = nano_checkpoint(root / "run", request.param)
    assert main(["export", "--checkpoint", str(run), "--out", str(root / "hf")]) == 0
    return request.param, run, root / "hf"


def test_export_loads_offline_and_greedy_generate_equals_the_cli(exported, capsys):
    name, run, folder = exported
    capsys.readouterr()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert isinstance(model, PararnnForCausalLM) and model.config.pararnn["model"] == name
    ids = tokenizer(PROMPT, return_tensors="pt")
    assert ids["input_ids"][0].tolist() == ByteTokenizer().encode(PROMPT)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    assert len(new) == 12 and len(set(new)) > 1  # a continuation, not one repeated token
    assert main(["generate", "--checkpoint", str(run), "--prompt", PROMPT, "--temperature", "0",
                 "--max-new-tokens", "12", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == PROMPT + ByteTokenizer().decode(new) + "\n"


def test_sampling_options(exported):
    _, _, folder = exported
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([ByteTokenizer().encode(PROMPT)] * 3)
    greedy = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=True, top_k=1), greedy)
    torch.manual_seed(1)
    first = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=1.5, top_k=50, top_p=0.9)
    torch.manual_seed(1)
    again = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=1.5, top_k=50, top_p=0.9)
    assert torch.equal(first, again) and first.shape == (3, ids.shape[1] + 8)
    assert ((first >= 0) & (first < 257)).all()
    assert not torch.equal(first, greedy)


def test_save_pretrained_round_trip(exported, tmp_path):
    _, _, folder = exported
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.save_pretrained(tmp_path / "again")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    ids = torch.randint(0, 257, (2, 19))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=0, rtol=0)
        # the cache continues a sequence as the full forward does
        first = model(ids[:, :11], use_cache=True)
        cache = first.get("cache", first.get("past_key_values"))
        rest = model(ids[:, 11:], **{pararnn.hf.modeling.CACHE_FIELD: cache}, use_cache=True)
        torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), model(ids).logits,
                                   atol=1e-5, rtol=1e-5)


def test_loss_and_bad_input(exported):
    _, _, folder = exported
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.randint(0, 257, (2, 9))
    with torch.no_grad():
        out = model(ids, labels=ids)
        expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ValueError, match="padding is not supported"):
        model(ids, attention_mask=torch.tensor([[0] + [1] * 8, [1] * 9]))


def test_registration_and_config_validation():
    config = AutoConfig.for_model("pararnn", pararnn={"model": "paralstm", "d_model": 64, "n_layers": 1})
    assert isinstance(config, PararnnConfig) and config.hidden_size == 64
    assert isinstance(AutoModelForCausalLM.from_config(config), PararnnForCausalLM)
    with pytest.raises(ValueError, match="unknown model"):
        PararnnConfig(pararnn={"model": "lstm"})


def test_tokenizers_encode_as_the_runs_tokenizer(tmp_path):
    from pararnn.data.tokenizers import BPETokenizer
    from pararnn.hf import hf_tokenizer
    docs = [f"def function_{i}(x):\n    return x * {i} + 'é'\n" for i in range(200)]
    text = "def function_7(y):\n  return 'é' * 3 + ☃\n"
    for tokenizer in (ByteTokenizer(), BPETokenizer.train(docs, vocab_size=300)):
        wrapped = hf_tokenizer(tokenizer)
        ids = tokenizer.encode(text)
        assert wrapped(text)["input_ids"] == ids
        assert wrapped.decode(ids) == tokenizer.decode(ids) == text
        assert wrapped.eos_token_id == tokenizer.eos_id
        # the end-of-text marker written in a text: as the run's tokenizer reads it (the
        # byte tokenizer as its bytes, the BPE as its special token), also after a save
        marked = "a<|endoftext|>b"
        assert wrapped(marked)["input_ids"] == tokenizer.encode(marked)
        folder = tmp_path / type(tokenizer).__name__
        wrapped.save_pretrained(folder)
        reloaded = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        assert reloaded(marked)["input_ids"] == tokenizer.encode(marked)
    with pytest.raises(TypeError, match="tokenizer must be"):
        hf_tokenizer("bytes")
