"""Deterministic, resumable batches.

The training batch of step ``s`` depends only on ``(seed, s, micro-step)``: its window
starts are drawn from a generator seeded with those numbers. Resuming at step ``s`` thus
needs no saved iterator (the "data position" is the step), and a run on ``W`` processes
sees the same global batch as one process with a ``W`` times larger batch: rank ``r``
takes rows ``r*B .. (r+1)*B`` of it.
"""

from __future__ import annotations

import numpy as np
import torch

from .corpus import DataError


def check_length(tokens: np.ndarray, seq_len: int, what: str) -> None:
    if len(tokens) < seq_len + 1:
        raise DataError(f"the {what} data has {len(tokens)} tokens, fewer than "
                        f"seq_len + 1 = {seq_len + 1}; use more data or a smaller --seq-len")


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int):
    chunk = torch.from_numpy(tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]


def train_batch(tokens: np.ndarray, step: int, *, seed: int, batch_size: int, seq_len: int,
                micro: int = 0, rank: int = 0, world: int = 1):
    """Inputs and targets ``(batch_size, seq_len)`` (int64, CPU) for this rank at ``step``."""
    rng = np.random.default_rng([seed, step, micro])
    starts = rng.integers(0, len(tokens) - seq_len, size=batch_size * world)
    return _windows(tokens, starts[rank * batch_size:(rank + 1) * batch_size], seq_len)


def eval_starts(num_tokens: int, seq_len: int, max_windows: int | None) -> np.ndarray:
    """Starts of non-overlapping windows covering the data (evenly thinned to ``max_windows``)."""
    starts = np.arange(0, num_tokens - seq_len, seq_len)
    if max_windows is not None and len(starts) > max_windows:
        starts = starts[np.linspace(0, len(starts) - 1, max_windows).round().astype(np.int64)]
    return starts


def eval_batches(tokens: np.ndarray, starts: np.ndarray, *, batch_size: int, seq_len: int):
    """Yield ``(x, y)`` batches over the windows at ``starts``."""
    for i in range(0, len(starts), batch_size):
        yield _windows(tokens, starts[i:i + batch_size], seq_len)
