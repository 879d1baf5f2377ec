"""Atomic checkpoints: weights in safetensors, the rest of the training state beside them.

A run directory holds ``checkpoints/step_XXXXXXXX/`` folders and a ``latest`` file naming
the newest one. A checkpoint is written into a hidden temporary folder, flushed to disk,
renamed into place (atomic), and only then does ``latest`` (replaced atomically) point at
it; older checkpoints beyond ``keep`` are removed last. A run killed at any moment thus
leaves the previous checkpoint usable, and the next start removes the temporary folder it
left (:func:`remove_stale_temporaries`). Opening a run folder whose latest checkpoint is
damaged (a disk that filled up, a copy cut short) falls back to the newest earlier one
that opens, with a warning naming both.

Files of one checkpoint:

* ``model.safetensors``: the model's full (unsharded) weights, float32;
* ``state.pt``: optimizer, LR scheduler and RNG states;
* ``meta.json``: step, tokens seen, data position, model and training configs;
* ``tokenizer.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import load_tokenizer
from ..models import ModelConfig, build_model

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A missing, incomplete, corrupt or mismatched checkpoint (one-line message)."""


class CheckpointWarning(UserWarning):
    """The latest checkpoint of a run is unusable and an earlier one is used instead."""


# names of the temporary files and folders this module writes (see save_checkpoint and
# write_text_atomic): ``checkpoints/.tmp_step_XXXXXXXX_PID`` and ``.NAME.tmpPID``
_TEMP_CHECKPOINT = re.compile(r"\.tmp_step_\d+_\d+")
_TEMP_RUN_FILE = re.compile(r"\.(latest|config\.json)\.tmp\d+")


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


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete what an interrupted :func:`save_checkpoint` or :func:`write_text_atomic` left in
    ``run_dir`` (matched by the names they use, nothing else); returns what was removed.
    Call it only when no other process is writing into the run."""
    run_dir = Path(run_dir)
    stale = []
    if (run_dir / "checkpoints").is_dir():
        stale += [p for p in (run_dir / "checkpoints").iterdir()
                  if p.is_dir() and _TEMP_CHECKPOINT.fullmatch(p.name)]
    if run_dir.is_dir():
        stale += [p for p in run_dir.iterdir() if p.is_file() and _TEMP_RUN_FILE.fullmatch(p.name)]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return sorted(stale)


def _step_folders(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, newest first."""
    parent = run_dir / "checkpoints"
    if not parent.is_dir():
        return []
    return sorted((p for p in parent.iterdir() if p.is_dir() and re.fullmatch(r"step_\d+", p.name)),
                  reverse=True)


def _candidates(run_dir: Path) -> list[Path]:
    """Checkpoints of a run folder in the order to try them: the one ``latest`` names, then
    every ``checkpoints/step_*`` folder from the newest (used when ``latest`` is missing or
    names a damaged checkpoint)."""
    ordered = []
    latest = run_dir / "latest"
    if latest.is_file():
        ordered.append(run_dir / latest.read_text().strip())
    ordered += [p for p in _step_folders(run_dir) if p not in ordered]
    return ordered


def has_checkpoint(run_dir: Path) -> bool:
    return bool(_candidates(Path(run_dir)))


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

    def check_files(self) -> None:
        """Raise :class:`CheckpointError` if a file is missing or visibly damaged, without
        reading the tensors: the safetensors header must cover the file exactly and
        ``state.pt`` must be a complete zip archive (a truncated file fails both)."""
        from safetensors import SafetensorError, safe_open

        weights, state = self.path / "model.safetensors", self.path / "state.pt"
        for file in (weights, state):
            if not file.is_file():
                raise CheckpointError(f"checkpoint {self.path} has no {file.name}")
        try:
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"checkpoint {weights} is corrupt: {err}") from None
        try:
            zipfile.ZipFile(state).close()
        except (zipfile.BadZipFile, OSError) as err:
            raise CheckpointError(f"checkpoint {state} is corrupt: {err}") from None
        self.tokenizer()


def open_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint at ``path``: a checkpoint folder (opened as it is), or a run folder,
    whose latest checkpoint is used unless it is damaged; then the newest earlier one that
    opens is used with a :class:`CheckpointWarning` naming both."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if (path / "meta.json").is_file():
        return _open_folder(path)
    candidates = _candidates(path)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {path} (expected meta.json, a 'latest' file "
                              "or checkpoints/step_* folders)")
    problems = []
    for folder in candidates:
        try:
            ckpt = _open_folder(folder)
            ckpt.check_files()
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems:
            warnings.warn(f"the latest checkpoint of {path} is unusable ({problems[0]}); "
                          f"using {folder} instead", CheckpointWarning, stacklevel=2)
        return ckpt
    raise CheckpointError(f"no usable checkpoint in {path}: " + "; ".join(problems))


def _open_folder(folder: Path) -> Checkpoint:
    if not (folder / "meta.json").is_file():
        raise CheckpointError(f"checkpoint {folder} is missing or incomplete (no meta.json)")
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
        # torch's first line only says "Error(s) in loading state_dict"; the keys follow
        lines = [line.strip() for line in str(err).strip().splitlines()]
        details = "; ".join(line for line in lines[1:] if line) or lines[0]
        if len(details) > 600:
            details = details[:600] + " ..."
        raise CheckpointError(f"checkpoint {ckpt.path} does not match its model config: {details}") from None
    return model.to(device).eval()
