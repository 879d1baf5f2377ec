"""Metrics as JSON lines and the loss-curve plot."""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLog:
    """Append-only ``metrics.jsonl``. A run starting at ``resume_step`` drops the records
    past that step (written after the checkpoint by the run that stopped), since it writes
    them again; the file is rewritten atomically."""

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        self.path = Path(path)
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_losses(metrics_path: Path, png_path: Path, title: str = "") -> None:
    """Training loss (per log step) and validation loss against tokens seen."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["tokens"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["tokens"], r["val_loss"]) for r in records if r.get("kind") == "val"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train), label="train", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path.with_name(f".{png_path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)


def summarize(run_dir: Path) -> dict:
    """Final validation metrics and training speed of a run (median tokens/s over the
    second half of the logs, which leaves out compilation and autotuning)."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    config = json.loads((run_dir / "config.json").read_text())
    val = [r for r in records if r.get("kind") == "val"]
    speeds = sorted(r["tok_per_s"] for r in records[len(records) // 2:] if r.get("kind") == "train")
    mfus = sorted(r["mfu"] for r in records[len(records) // 2:] if "mfu" in r)
    if not val or not speeds:
        raise ValueError(f"run {run_dir} has no validation or training records yet")
    params = config.get("params")
    return {"run": run_dir.name, "model": config["train"]["model"], "params": params,
            "tokens": val[-1]["tokens"], "steps": val[-1]["step"], "val_loss": val[-1]["val_loss"],
            "val_bpb": val[-1]["val_bpb"], "tok_per_s": speeds[len(speeds) // 2],
            "mfu": mfus[len(mfus) // 2] if mfus else None}


def plot_comparison(run_dirs: list[Path], png_path: Path, title: str = "") -> None:
    """Validation loss against tokens for several runs in one figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run_dir in run_dirs:
        records = read_metrics(Path(run_dir) / "metrics.jsonl")
        model = json.loads((Path(run_dir) / "config.json").read_text())["train"]["model"]
        val = [(r["tokens"], r["val_loss"]) for r in records if r.get("kind") == "val"]
        if val:
            name = Path(run_dir).name
            ax.plot(*zip(*val), "o-", markersize=3, label=model if name == model else f"{model} ({name})")
    ax.set_xlabel("tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
