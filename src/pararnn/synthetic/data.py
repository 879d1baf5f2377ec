"""Seeded, pairwise-disjoint train / validation / test sets of a synthetic task.

Sequences are drawn in rounds from one ``torch.Generator`` seeded with ``seed``; a
sequence whose bytes hash to one already drawn (in any split) is dropped, so no test or
validation sequence ever appears in training. Sets at other lengths (the length
generalisation tests) cannot overlap the training set and are drawn from their own seed.
"""

from __future__ import annotations

import hashlib

import torch

from .tasks import Task


def sequence_hashes(inputs: torch.Tensor) -> list[bytes]:
    """A digest of each row of ``inputs`` (its length and int64 values)."""
    rows = inputs.to(torch.int64).cpu().numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]


def disjoint_splits(task: Task, length: int, sizes: dict[str, int], seed: int,
                    max_rounds: int = 50) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{split: (inputs, labels)}`` with ``sizes[split]`` distinct sequences each, no
    sequence shared between splits; splits are filled in the order of ``sizes``."""
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size of split {name!r} must be a positive int, got {size!r}")
    generator = torch.Generator().manual_seed(seed)
    seen: set[bytes] = set()
    splits = {}
    for name, size in sizes.items():
        kept, have = [], 0
        for _ in range(max_rounds):
            inputs, labels = task.generate(size - have, length, generator)
            fresh = []
            for i, digest in enumerate(sequence_hashes(inputs)):
                if digest not in seen:
                    seen.add(digest)
                    fresh.append(i)
            index = torch.tensor(fresh, dtype=torch.long)
            kept.append((inputs[index], labels[index]))
            have += len(fresh)
            if have == size:
                break
        else:
            raise ValueError(f"{task.name} at length {length} has too few distinct sequences for "
                             f"{sum(sizes.values())} disjoint samples; use a longer length or fewer samples")
        splits[name] = tuple(torch.cat(parts) for parts in zip(*kept))
    return splits
