"""lm-evaluation-harness: the registered ``pararnn`` model on small local tasks (offline)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import pararnn.lm_eval_model  # noqa: E402,F401  (registers the model type)
from pararnn.data.tokenizers import ByteTokenizer  # noqa: E402
from pararnn.generation import Generator  # noqa: E402
from pararnn.train.checkpoint import load_model, open_checkpoint  # noqa: E402

from checkpoints import nano_checkpoint  # noqa: E402

QUESTIONS = [{"question": "2 + 2 =", "choices": [" 4", " 5", " four"], "answer": 0},
             {"question": "def f(x):", "choices": [" return x", " pass"], "answer": 1},
             {"question": "Paris is in", "choices": [" France", " Texas", " é"], "answer": 0}]
TEXTS = [{"text": "import os\nprint(os.getcwd())\n"}, {"text": "Smörgåsbord. " * 3}]

TASKS = {
    "pararnn_choice": """
task: pararnn_choice
dataset_path: json
dataset_kwargs: {{data_files: {{test: {questions}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list: [{{metric: acc}}]
""",
    "pararnn_rolling": """
task: pararnn_rolling
dataset_path: json
dataset_kwargs: {{data_files: {{test: {texts}}}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list: [{{metric: word_perplexity}}]
""",
    "pararnn_generate": """
task: pararnn_generate
dataset_path: json
dataset_kwargs: {{data_files: {{test: {questions}}}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs: {{until: ["\\n", "x"], max_gen_toks: 6, do_sample: false}}
metric_list: [{{metric: exact_match}}]
""",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    run = nano_checkpoint(root / "run", "paragru")
    for name, rows in (("questions", QUESTIONS), ("texts", TEXTS)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = root / "tasks"
    tasks.mkdir()
    for name, text in TASKS.items():
        (tasks / f"{name}.yaml").write_text(text.format(questions=root / "questions.jsonl",
                                                        texts=root / "texts.jsonl"))
    model = load_model(open_checkpoint(run), torch.device("cpu"))
    return run, tasks, model


def direct_score(model, context, continuation) -> tuple[float, bool]:
    """The continuation's summed token log-probability from one forward of the model, and
    whether every continuation token is the argmax (text, or lists of token ids; an empty
    context is the end-of-text token)."""
    tok = ByteTokenizer()
    ctx = (tok.encode(context) if isinstance(context, str) else context) or [tok.eos_id]
    cont = torch.tensor(tok.encode(continuation) if isinstance(continuation, str) else continuation)
    ids = torch.cat([torch.tensor(ctx), cont])[None]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids[:, :-1]).double(), -1)[0, len(ctx) - 1:]
    return logprobs.gather(-1, cont[:, None]).sum().item(), bool((logprobs.argmax(-1) == cont).all())


def direct_logprob(model, context, continuation) -> float:
    return direct_score(model, context, continuation)[0]


def evaluate(run, tasks, names, **model_args):
    args = ",".join(f"{k}={v}" for k, v in {"checkpoint": run, "device": "cpu", **model_args}.items())
    manager = TaskManager(include_path=str(tasks), include_defaults=False)  # no index of lm-eval's own tasks
    return lm_eval.simple_evaluate(model="pararnn", model_args=args, tasks=names, batch_size=2,
                                   task_manager=manager, log_samples=True)


@pytest.fixture(scope="module")
def results(setup):
    """Every local task at a long context, and the rolling one at a short one."""
    run, tasks, _ = setup
    return {"long": evaluate(run, tasks, list(TASKS), max_length=512),
            "short": evaluate(run, tasks, ["pararnn_rolling"], max_length=8)}


def test_loglikelihoods_are_the_models_own_scores(setup, results):
    model = setup[2]
    out = results["long"]
    samples = out["samples"]["pararnn_choice"]
    assert len(samples) == len(QUESTIONS)
    for sample in samples:
        scores = [r[0][0] for r in sample["resps"]]
        expected = [direct_score(model, *arguments) for arguments in sample["arguments"]]
        assert scores == pytest.approx([e[0] for e in expected], abs=1e-4)
        assert [r[0][1] for r in sample["resps"]] == [e[1] for e in expected]
        best = max(range(len(scores)), key=scores.__getitem__)
        assert sample["acc"] == float(best == sample["doc"]["answer"])
    for sample in out["samples"]["pararnn_rolling"]:
        expected = direct_logprob(model, "", sample["doc"]["text"])  # one window, after EOS
        assert sample["resps"][0][0] == pytest.approx(expected, abs=1e-4)


def test_rolling_windows_score_every_token_once(setup, results):
    """A text longer than max_length is scored in windows of at most max_length tokens:
    the sum over the windows lmeval builds equals the model's own window scores."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
    model, tok = setup[2], ByteTokenizer()
    for sample in results["short"]["samples"]["pararnn_rolling"]:
        tokens = tok.encode(sample["doc"]["text"])
        windows = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, tok.eos_id, 8, 1)]
        assert sum(len(target) for _, target in windows) == len(tokens) > 8
        expected = sum(direct_logprob(model, ctx, target) for ctx, target in windows)
        assert sample["resps"][0][0] == pytest.approx(expected, abs=1e-4)


def test_generate_until_is_greedy_decoding_cut_at_the_stop_strings(setup, results):
    model = setup[2]
    out = results["long"]
    tok = ByteTokenizer()
    for sample in out["samples"]["pararnn_generate"]:
        prompt = torch.tensor([tok.encode(sample["doc"]["question"])])
        tokens = Generator(model).generate(prompt, 6, stop_tokens=[tok.eos_id])[0].tolist()
        text = tok.decode([t for t in tokens if t != tok.eos_id])
        expected = text.split("\n")[0].split("x")[0]
        assert sample["resps"][0][0] == expected


@pytest.mark.slow  # a fresh process importing lm-eval and indexing its task folder
def test_command_line_wrapper(setup, tmp_path):
    run, tasks, _ = setup
    result = subprocess.run(
        [sys.executable, "-m", "pararnn.lm_eval_model", "--model", "pararnn",
         "--model_args", f"checkpoint={run}", "--tasks", "pararnn_choice", "--include_path", str(tasks),
         "--device", "cpu", "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(pararnn.lm_eval_model.__file__).parents[1])})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pararnn_choice" in result.stdout and "acc" in result.stdout
    assert list((tmp_path / "out").rglob("results*.json"))


def test_bad_model_args(setup):
    run, _, _ = setup
    with pytest.raises(TypeError, match="unknown pararnn model_args: colour"):
        pararnn.lm_eval_model.PararnnLM(checkpoint=str(run), colour="red")
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        pararnn.lm_eval_model.PararnnLM(checkpoint=str(run), batch_size="auto")


def test_generate_until_without_stop_strings_runs_to_max_gen_toks(setup):
    """No ``until`` (or only empty strings): decoding stops at end-of-text or after
    max_gen_toks, as greedy decoding does (the end-of-text token decodes to "", which
    matched every text: one token, then a split on "")."""
    from lm_eval.api.instance import Instance
    run, _, model = setup
    lm = pararnn.lm_eval_model.PararnnLM(checkpoint=str(run), device="cpu", max_length=64)
    tok = ByteTokenizer()
    tokens = Generator(model).generate(torch.tensor([tok.encode("def f(x):")]), 8,
                                       stop_tokens=[tok.eos_id])[0].tolist()
    expected = tok.decode([t for t in tokens if t != tok.eos_id])
    for kwargs in ({"max_gen_toks": 8}, {"until": [], "max_gen_toks": 8}, {"until": [""], "max_gen_toks": 8}):
        request = Instance("generate_until", {}, ("def f(x):", kwargs), 0)
        assert lm.generate_until([request]) == [expected]


def test_requests_beyond_max_length_are_refused(setup):
    """A continuation longer than max_length cannot be scored in one window, and a
    generation of max_gen_toks >= max_length would keep no context: clear errors."""
    from lm_eval.api.instance import Instance
    run, _, _ = setup
    lm = pararnn.lm_eval_model.PararnnLM(checkpoint=str(run), device="cpu", max_length=16)
    with pytest.raises(ValueError, match="continuation of 20 tokens.*max_length=16"):
        lm.loglikelihood([Instance("loglikelihood", {}, ("Question:", "x" * 20), 0)])
    assert len(lm.loglikelihood([Instance("loglikelihood", {}, ("Question:", "x" * 16), 0)])) == 1
    with pytest.raises(ValueError, match="max_gen_toks=16 .* max_length=16"):
        lm.generate_until([Instance("generate_until", {}, ("def", {"max_gen_toks": 16}), 0)])


@pytest.mark.parametrize("kwargs, max_new, temperature", [
    ({}, 256, 0.0),
    ({"max_new_tokens": 5}, 5, 0.0),  # the aliases lm-eval's backends take
    ({"max_tokens": 7, "temperature": 0.0}, 7, 0.0),
    ({"do_sample": False, "temperature": 1.0}, 256, 0.0),  # greedy whatever the temperature
    ({"do_sample": True}, 256, 1.0),  # sampling at temperature 1 (it decoded greedily)
    ({"do_sample": True, "temperature": 0.5, "top_k": 3}, 256, 0.5),
    ({"temperature": 0.7, "num_beams": 1, "repetition_penalty": 1.0}, 256, 0.7),
])
def test_generation_options_are_read_as_lm_evals_backends_read_them(kwargs, max_new, temperature):
    got_max_new, sampling = pararnn.lm_eval_model._generation_options(kwargs)
    assert (got_max_new, sampling.temperature) == (max_new, temperature)
    assert sampling.top_k == kwargs.get("top_k")


def test_generation_options_the_model_lacks_are_refused():
    with pytest.raises(ValueError, match="generation_kwargs num_beams, repetition_penalty are not "
                       "supported"):
        pararnn.lm_eval_model._generation_options({"num_beams": 4, "repetition_penalty": 1.2})
