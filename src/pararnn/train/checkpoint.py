"""Atomic checkpoints: weights in safetensors, the rest of the training state beside them.

A run directory holds ``checkpoints/step_XXXXXXXX/`` folders and a ``latest`` file naming
the newest one. A checkpoint is written into a hidden temporary folder, flushed to disk,
renamed into place (atomic), and only then does ``latest`` (replaced atomically) point at
it; older checkpoints beyond ``keep`` are removed last. A run killed at any moment thus
leaves the previous checkpoint usable.

Files of one checkpoint:

* ``model.safetensors``: the model's full (unsharded) weights, float32;
* ``state.pt``: optimizer, LR scheduler and RNG states;
* ``meta.json``: step, tokens seen, data position, model and training configs;
* ``tokenizer.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import load_tokenizer
from ..models import ModelConfig, build_model

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A missing, incomplete, corrupt or mismatched checkpoint (one-line message)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in path.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, step: int, model_state: dict, train_state: dict, meta: dict,
                    tokenizer, keep: int = 2) -> Path:
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    parent = run_dir / "checkpoints"
    parent.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final, tmp = parent / name, parent / f".tmp_{name}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model_state.items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    torch.save(train_state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=1))
    tokenizer.save(tmp)
    _fsync_tree(tmp)
    if final.exists():  # the same step saved before (e.g. a run that re-reached it)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(parent)
    write_text_atomic(run_dir / "latest", f"checkpoints/{name}\n")
    kept = sorted(p for p in parent.glob("step_*") if p.is_dir())
    for old in kept[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from ``path``: the folder itself, or the run folder's latest."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if (path / "meta.json").is_file():
        return path
    latest = path / "latest"
    if latest.is_file():
        target = path / latest.read_text().strip()
        if not (target / "meta.json").is_file():
            raise CheckpointError(f"{latest} points to {target}, which is not a complete checkpoint")
        return target
    raise CheckpointError(f"no checkpoint in {path} (expected meta.json or a 'latest' file)")


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / "latest").is_file()


@dataclass
class Checkpoint:
    path: Path
    meta: dict
    model_config: ModelConfig

    def model_state(self) -> dict:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        file = self.path / "model.safetensors"
        if not file.is_file():
            raise CheckpointError(f"checkpoint {self.path} has no model.safetensors")
        try:
            return load_file(str(file))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"checkpoint {file} is corrupt: {err}") from None

    def train_state(self) -> dict:
        file = self.path / "state.pt"
        if not file.is_file():
            raise CheckpointError(f"checkpoint {self.path} has no state.pt")
        try:
            return torch.load(file, map_location="cpu", weights_only=False)
        except Exception as err:  # torch.load raises many types on a damaged file
            raise CheckpointError(f"checkpoint {file} is corrupt: {err}") from None

    def tokenizer(self):
        try:
            return load_tokenizer(self.path)
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"checkpoint {self.path} has no usable tokenizer.json: {err}") from None


def open_checkpoint(path: str | Path) -> Checkpoint:
    folder = resolve_checkpoint(path)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        model_config = ModelConfig.from_dict(meta["model_config"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {folder} has a corrupt meta.json: {err}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {folder} has format version "
                              f"{meta.get('format_version')}, expected {FORMAT_VERSION}")
    return Checkpoint(folder, meta, model_config)


def load_model(ckpt: Checkpoint, device: torch.device) -> torch.nn.Module:
    """The checkpoint's model with its weights, in eval mode on ``device``."""
    model = build_model(ckpt.model_config)
    try:
        model.load_state_dict(ckpt.model_state())
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {ckpt.path} does not match its model config: {first}") from None
    return model.to(device).eval()
