"""Markdown table and JSON file of a set of synthetic runs."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import torch

from .models import PAPER_SETUP


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _gap(value) -> str:
    return "n/a" if value is None else f"{value:.1e}"


def markdown_table(results: list[dict]) -> str:
    """One row per run: its peak learning rate, steps, seconds and how training ended
    (:func:`~.runner.training_status`: solved, still learning = under-trained, plateau),
    accuracies (%) at 1x/2x/4x the training length (all scored positions, and the last
    position at 1x), the RNNs' parallel solves with their largest state gap to the exact
    recurrence, and the paper's number."""
    lines = [
        "| task | model | params | lr | steps | train s | status | test acc | last pos | 2x len | 4x len "
        "| Newton 3 it: acc / gap | default solve: acc / gap | paper |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lengths = list(r["test"])
        at = [r["test"][length] for length in lengths]
        solves = at[0].get("solves")
        cells = ["—", "—"]
        if solves is not None:
            cells = [f"{_pct(solves[name]['acc'])} / {_gap(solves[name]['max_state_gap'])}"
                     for name in ("newton3", "default")]
        longer = [_pct(a["acc"]) for a in at[1:3]]
        longer += ["n/a"] * (2 - len(longer))
        paper = "—" if r["paper_test_acc"] is None else f"{r['paper_test_acc']:g}"
        lines.append(f"| {r['task']} | {r['model']} | {r['params']:,} | {r['run_config']['lr']:g} | "
                     f"{r['steps']} | {r['train_seconds']:.0f} | {r['status']} | "
                     f"{_pct(at[0]['acc'])} | {_pct(at[0]['acc_last'])} | "
                     f"{' | '.join(longer)} | {' | '.join(cells)} | {paper} |")
    return "\n".join(lines)


def best_of_grid(runs: list[dict]) -> list[dict]:
    """One run per (task, model): of the runs that differ in the learning rate only (the
    GPU script's grid), the one with the highest final *validation* accuracy (ties: the
    fewest steps), so that the test sets play no part in the choice. Each kept run lists
    the whole grid under ``lr_grid``."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["model"]), []).append(r)
    best = []
    for group in groups.values():
        chosen = max(group, key=lambda r: (r["final_val_acc"], -r["steps"]))
        grid = [{"lr": r["run_config"]["lr"], "final_val_acc": r["final_val_acc"], "steps": r["steps"],
                 "status": r["status"]} for r in sorted(group, key=lambda r: r["run_config"]["lr"])]
        best.append({**chosen, "lr_grid": grid})
    return best


def grid_table(runs: list[dict]) -> str:
    """Final validation accuracy (%) of every learning rate tried; * marks the one kept."""
    lrs = sorted({g["lr"] for r in runs for g in r["lr_grid"]})
    lines = ["| task | model | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
             "|---|---|" + "---:|" * len(lrs)]
    for r in runs:
        val = {g["lr"]: g["final_val_acc"] for g in r["lr_grid"]}
        cells = ["—" if lr not in val else _pct(val[lr]) + (" *" if lr == r["run_config"]["lr"] else "")
                 for lr in lrs]
        lines.append(f"| {r['task']} | {r['model']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def environment(device: str) -> dict:
    """Where and when the runs were measured."""
    env = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": device, "torch": torch.__version__, "python": platform.python_version(),
           "host_cpu_count": os.cpu_count()}
    if hasattr(os, "getloadavg"):
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def write_outputs(results: list[dict], out_dir: Path, command: str, device: str) -> tuple[Path, Path]:
    """``results.json`` (every run, the environment, the paper's setup) and ``results.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"command": command, "environment": environment(device), "paper_setup": PAPER_SETUP,
           "accuracy_note": "accuracies are fractions of the scored positions; 'acc' and 'acc_last' "
                            "of a ParaRNN run are through the exact recurrence (mode='sequential'); "
                            "'solves' holds the parallel solves and their max |h_par - h_seq|",
           "runs": results}
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    json_path.write_text(json.dumps(doc, indent=1))
    text = f"{PAPER_SETUP}\n\n`{command}` on {device}\n\n{markdown_table(results)}\n"
    if all("lr_grid" in r for r in results):
        text += f"\nLearning-rate grid (final validation accuracy, %):\n\n{grid_table(results)}\n"
    md_path.write_text(text)
    return json_path, md_path


def merge_outputs(json_paths: list[Path], out_dir: Path, command: str) -> tuple[Path, Path]:
    """Combine the ``results.json`` of several jobs (e.g. run concurrently on one GPU) into
    one ``results.json`` / ``results.md``, keeping the best learning rate of each
    (task, model) (:func:`best_of_grid`); each run keeps its job's command and environment."""
    runs, parts = [], []
    for path in json_paths:
        doc = json.loads(Path(path).read_text())
        parts.append({"command": doc["command"], "environment": doc["environment"]})
        runs += [{**run, "job": {"command": doc["command"], "environment": doc["environment"]}}
                 for run in doc["runs"]]
    if not runs:
        raise ValueError("merge_outputs needs at least one results.json with runs")
    order = {name: i for i, name in enumerate(("parity", "mqar", "khop", "modcount", "s5"))}
    models = {name: i for i, name in enumerate(("transformer", "mamba2", "paragru", "paralstm"))}
    runs = best_of_grid(runs)
    runs.sort(key=lambda r: (order.get(r["task"], 99), models.get(r["model"], 99)))
    device = parts[0]["environment"]["device"]
    return write_outputs(runs, out_dir, command, device)
