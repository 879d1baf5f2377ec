"""Training, evaluation, checkpoints and distributed set-up for the language models."""

from .checkpoint import CheckpointError, load_model, open_checkpoint
from .loop import TrainConfig, evaluate, train

__all__ = ["CheckpointError", "TrainConfig", "evaluate", "load_model", "open_checkpoint", "train"]
