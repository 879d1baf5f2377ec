"""Training runs, evaluation through the parallel and sequential solves, the CLI verb."""

import json
import math
import shlex

import pytest
import torch

from pararnn import NewtonConfig
from pararnn.cli import build_parser, main
from pararnn.synthetic.models import build_synthetic_model
from pararnn.synthetic.report import best_of_grid, merge_outputs
from pararnn.synthetic.runner import RunConfig, evaluate, lr_at, rnn_layer, run, training_status
from pararnn.synthetic.tasks import get_task

TINY = ["--width", "16", "--heads", "2", "--length", "20", "--steps", "4", "--eval-every", "2",
        "--batch-size", "8", "--n-train", "64", "--n-val", "16", "--n-test", "32", "--n-test-long", "16",
        "--device", "cpu"]


def test_cli_grid_writes_table_and_self_describing_json(tmp_path, capsys):
    out = tmp_path / "synthetic"
    assert main(["synthetic", "--task", "parity,modcount", "--model", "paragru,mamba2",
                 *TINY, "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["command"].startswith("pararnn synthetic") and "width 64" in doc["paper_setup"]
    assert "--seed 0 " in doc["command"] and "--all" not in doc["command"]
    # the recorded command runs as it is: the same options (every one, defaults included)
    again = build_parser().parse_args(shlex.split(doc["command"])[1:])
    assert {k: v for k, v in vars(again).items() if k != "out"} == {
        **{k: v for k, v in vars(build_parser().parse_args(["synthetic", *TINY])).items() if k != "out"},
        "task": "parity,modcount", "model": "paragru,mamba2"}
    assert doc["environment"]["device"] == "cpu" and "load_average" in doc["environment"]
    runs = {(r["task"], r["model"]): r for r in doc["runs"]}
    assert set(runs) == {(t, m) for t in ("parity", "modcount") for m in ("paragru", "mamba2")}
    assert runs["parity", "paragru"]["paper_test_acc"] == 100
    assert runs["parity", "mamba2"]["paper_test_acc"] == 51
    assert runs["modcount", "paragru"]["paper_test_acc"] is None
    for r in doc["runs"]:
        assert r["steps"] == 4 and r["params"] > 0 and r["train_seconds"] >= 0
        assert r["stop_reason"] == "steps" and r["status"] in ("still learning", "plateau")
        assert r["task_spec"]["name"] == r["task"] and r["task_spec"]["num_classes"] > 1
        assert set(r["test"]) == {"20", "40", "80"}
        assert r["test"]["20"]["n"] == 32 and r["test"]["80"]["n"] == 16
        for at in r["test"].values():
            assert 0 <= at["acc"] <= 1 and 0 <= at["acc_last"] <= 1
        solves = r["test"]["20"].get("solves")
        if r["model"] == "paragru":
            assert set(solves) == {"newton3", "default", "sequential"}
            assert solves["newton3"]["max_state_gap"] >= 0
            assert solves["newton3"]["backend"] == "torch"  # no fused kernels on the CPU
            assert r["test"]["20"]["acc"] == solves["sequential"]["acc"]
        else:
            assert solves is None
    table = (out / "results.md").read_text()
    assert table.count("\n| parity |") == 2 and "| 100 |" in table
    assert "| task | model | params |" in capsys.readouterr().out

    # the GPU script runs jobs concurrently and merges their JSON in the paper's order
    merge_outputs([out / "results.json"], tmp_path / "merged", "benchmarks/gpu_synthetic.sh OUTDIR")
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert merged["command"] == "benchmarks/gpu_synthetic.sh OUTDIR"
    assert [(r["task"], r["model"]) for r in merged["runs"]] == [
        ("parity", "mamba2"), ("parity", "paragru"), ("modcount", "mamba2"), ("modcount", "paragru")]
    assert all(r["job"]["command"] == doc["command"] for r in merged["runs"])
    assert all(r["lr_grid"] == [{"lr": 5e-4, "final_val_acc": r["final_val_acc"], "steps": 4,
                                 "status": r["status"]}] for r in merged["runs"])
    assert "Learning-rate grid" in (tmp_path / "merged" / "results.md").read_text()


def test_training_status_says_where_a_run_is_under_trained():
    def curve(*accs):
        return [{"step": 100 * (i + 1), "val_acc": a} for i, a in enumerate(accs)]
    assert training_status(curve(0.5, 1.0), reached_target=True) == "solved"
    # compared with the last evaluation at or before 3/4 of the run (step 300 of 400)
    assert training_status(curve(0.2, 0.3, 0.40, 0.42), reached_target=False) == "still learning"
    assert training_status(curve(0.2, 0.3, 0.40, 0.405), reached_target=False) == "plateau"
    assert training_status(curve(0.2), reached_target=False) == "still learning"


def _fake_run(task, model, lr, val, steps, test):
    return {"task": task, "model": model, "run_config": {"lr": lr}, "final_val_acc": val,
            "steps": steps, "status": "plateau", "test_acc": test}


def test_best_learning_rate_is_chosen_on_validation_never_on_test():
    runs = [_fake_run("mqar", "mamba2", 1e-3, 0.40, 900, test=0.99),
            _fake_run("mqar", "mamba2", 3e-3, 0.95, 900, test=0.10),
            _fake_run("khop", "mamba2", 1e-3, 1.0, 300, test=1.0),
            _fake_run("khop", "mamba2", 3e-3, 1.0, 200, test=1.0)]  # tie: fewer steps wins
    best = {(r["task"], r["model"]): r for r in best_of_grid(runs)}
    assert best["mqar", "mamba2"]["run_config"]["lr"] == 3e-3
    assert best["khop", "mamba2"]["run_config"]["lr"] == 3e-3
    assert [g["lr"] for g in best["mqar", "mamba2"]["lr_grid"]] == [1e-3, 3e-3]
    assert best["mqar", "mamba2"]["lr_grid"][0]["final_val_acc"] == 0.40


def test_cli_rejects_unknown_names():
    assert main(["synthetic", "--task", "parity,nope", *TINY]) == 2
    assert main(["synthetic", "--model", "rwkv", *TINY]) == 2


def test_cli_checks_every_run_before_training_and_writes_after_each(tmp_path, capsys, monkeypatch):
    """A length too short for the grid's second task, --all with --task, a target above 1:
    errors before any run trains; an interrupted grid keeps the runs it finished."""
    import pararnn.synthetic.runner as runner

    trained = []
    real_run = runner.run
    monkeypatch.setattr(runner, "run", lambda cfg: trained.append(cfg.task) or real_run(cfg))
    tiny = [a if a != "20" else "8" for a in TINY]  # length 8: parity yes, mqar no
    assert main(["synthetic", "--task", "parity,mqar", *tiny]) == 2
    assert "length must be >= 9 for mqar" in capsys.readouterr().err and trained == []
    assert main(["synthetic", "--all", "--task", "parity", *TINY]) == 2
    assert main(["synthetic", "--target", "2", *TINY]) == 2
    assert trained == []

    def interrupted(cfg):  # Ctrl-C during the second run
        if trained:
            raise KeyboardInterrupt
        trained.append(cfg.task)
        return real_run(cfg)
    monkeypatch.setattr(runner, "run", interrupted)
    out = tmp_path / "grid"
    assert main(["synthetic", "--task", "parity,modcount", *TINY, "--out", str(out)]) == 130
    assert [r["task"] for r in json.loads((out / "results.json").read_text())["runs"]] == ["parity"]


def test_early_stop_at_the_target_accuracy():
    result = run(RunConfig(task="parity", model="transformer", length=12, width=16, heads=2, steps=50,
                           eval_every=3, target=0.0, n_train=32, n_val=8, n_test=8, n_test_long=8,
                           length_factors=(1,)), log=lambda line: None)
    assert result["steps"] == 3 and result["stopped_early"]
    assert [point["step"] for point in result["curve"]] == [3]


def test_learning_rate_warms_up_then_follows_a_cosine():
    cfg = RunConfig(task="parity", model="paragru", steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    plain = RunConfig(task="parity", model="paragru", steps=100, warmup_steps=10, lr=1e-3)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    # with a time limit the cosine follows whichever budget runs out first
    timed = RunConfig(task="parity", model="paragru", steps=100, warmup_steps=10, lr=1e-3, time_limit=20.0)
    assert lr_at(55, timed, elapsed=0.0) == pytest.approx(lr_at(55, plain)) == pytest.approx(0.5e-3)
    assert lr_at(20, timed, elapsed=10.0) == pytest.approx(0.5e-3)
    assert lr_at(20, timed, elapsed=25.0) == pytest.approx(0.0)


def test_bad_run_config():
    with pytest.raises(ValueError, match="unknown task"):
        RunConfig(task="xor", model="paragru")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        RunConfig(task="parity", model="paragru", batch_size=0)


def test_state_gap_shows_an_unconverged_newton_solve_and_overrides_survive():
    torch.manual_seed(0)
    task = get_task("parity")
    model = build_synthetic_model(task, "paragru", width=16, heads=1)
    rnn = rnn_layer(model)
    with torch.no_grad():  # strong unclipped recurrence: Newton needs many iterations
        rnn.cell.a.mul_(8.0)
    rnn.newton = NewtonConfig(max_iters=7)  # a user's override, put back after evaluation
    inputs, labels = task.generate(64, 64, torch.Generator().manual_seed(1))
    long = evaluate(model, inputs, labels, batch_size=32, device="cpu")
    # Newton is exact after T iterations: 3 steps leave nothing to converge
    short = evaluate(model, inputs[:, :3], labels[:, :3], batch_size=32, device="cpu")
    assert rnn.newton == NewtonConfig(max_iters=7) and rnn.mode == "auto" and model.training
    assert long["solves"]["newton3"]["max_state_gap"] > 1e-2
    assert short["solves"]["newton3"]["max_state_gap"] < 1e-5
    # the headline accuracy is that of the exact recurrence
    rnn.mode = "sequential"
    with torch.no_grad():
        hits = (model(inputs).argmax(-1) == labels).float().mean()
    assert long["acc"] == pytest.approx(float(hits))


def test_small_paragru_learns_parity_on_cpu():
    result = run(RunConfig(task="parity", model="paragru", length=16, width=16, heads=1, lr=1e-2,
                           batch_size=64, steps=600, eval_every=25, n_train=2000, n_val=200,
                           n_test=500, n_test_long=200, length_factors=(1, 2)), log=lambda line: None)
    assert result["stopped_early"] and result["test_acc"] >= 0.99
    assert result["test"]["16"]["acc_last"] >= 0.99
