"""Synthetic state-tracking tasks: token sequences with a label at scored positions.

Every task draws its sequences from a ``torch.Generator`` (so a seed fixes the data) and
returns ``(inputs, labels)``, both ``(n, length)`` int64; ``labels`` is
:data:`IGNORE` (-100, PyTorch's ignore index) at positions that are not scored.

* ``parity``: bits; label ``t`` = XOR of bits ``0..t`` (every position scored).
* ``modcount``: digits ``0..m-1``; label ``t`` = their running sum mod ``m`` (parity
  for ``m = 2``; beyond linear SSMs whose transition eigenvalues lie in [0, 1]).
* ``s5``: permutations of 5 elements, as indices into the 120 permutations in
  lexicographic order; label ``t`` = index of the product ``g_t ∘ ... ∘ g_1`` (apply
  ``g_1`` first). S5 is not solvable, so no diagonal linear SSM with a fixed number of
  layers tracks it (Merrill et al., "The illusion of state in state-space models", 2024).
* ``mqar``: multi-query associative recall. The sequence opens with ``pairs`` key-value
  pairs ``k_1 v_1 ... k_P v_P`` (distinct keys from ``[0, keys)``, values from
  ``[keys, keys + values)``); every later position holds one of these keys, drawn at
  random, and is labelled with that key's value. Longer sequences hold more queries, not
  more pairs.
* ``khop`` (k=2): induction-style chains over ``symbols`` tokens. Write ``next_t(a)`` for
  the token that followed the most recent occurrence of ``a`` strictly before position
  ``t`` (``x_{j+1}`` for the largest ``j < t`` with ``x_j = a``). The label at ``t`` is
  ``next_t(next_t(x_t))``: follow the "what came after it last time" link twice, both
  times in the table as it stands at ``t``. Positions where a link does not exist yet are
  not scored.
"""

from __future__ import annotations

import itertools

import torch

IGNORE = -100


class Task:
    """A task's name, input vocabulary and number of label classes."""

    min_length = 1  # the shortest sequence the task can form

    def __init__(self, name: str, vocab_size: int, num_classes: int, **options) -> None:
        self.name, self.vocab_size, self.num_classes = name, vocab_size, num_classes
        self.options = options  # the parameters that define the task, for reports

    def describe(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "num_classes": self.num_classes,
                **self.options}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.options.items())})"

    def generate(self, n: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` sequences of ``length`` tokens and their labels (see the module doc)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if isinstance(length, bool) or not isinstance(length, int) or length < self.min_length:
            raise ValueError(f"length must be an int >= {self.min_length} for {self.name}, got {length!r}")
        inputs = self.sample_inputs(n, length, generator)
        return inputs, self.labels(inputs)

    def sample_inputs(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.vocab_size, (n, length), generator=generator)

    def labels(self, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Parity(Task):
    def __init__(self) -> None:
        super().__init__("parity", 2, 2)

    def labels(self, inputs):
        return inputs.cumsum(dim=1) % 2


class ModCount(Task):
    def __init__(self, modulus: int = 5) -> None:
        super().__init__("modcount", modulus, modulus, modulus=modulus)

    def labels(self, inputs):
        return inputs.cumsum(dim=1) % self.num_classes


def _permutations(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All permutations of ``n`` elements (lexicographic, ``(n!, n)``) and their
    composition table ``table[a, b]`` = index of ``b ∘ a`` (apply ``a`` first)."""
    perms = torch.tensor(list(itertools.permutations(range(n))))
    index = {tuple(p.tolist()): i for i, p in enumerate(perms)}
    table = torch.tensor([[index[tuple(b[a].tolist())] for b in perms] for a in perms])
    return perms, table


class SymmetricGroup(Task):
    def __init__(self, degree: int = 5) -> None:
        perms, table = _permutations(degree)
        super().__init__(f"s{degree}", len(perms), len(perms), degree=degree)
        self.table = table

    def labels(self, inputs):
        # a scan over time with a table lookup per step: T steps of (n,) gathers
        labels = torch.empty_like(inputs)
        state = inputs[:, 0]
        labels[:, 0] = state
        for t in range(1, inputs.shape[1]):
            state = self.table[state, inputs[:, t]]
            labels[:, t] = state
        return labels


class MQAR(Task):
    def __init__(self, pairs: int = 4, keys: int = 16, values: int = 16) -> None:
        if pairs > keys:
            raise ValueError(f"pairs={pairs} needs at least as many keys, got keys={keys}")
        super().__init__("mqar", keys + values, keys + values, pairs=pairs, keys=keys, values=values)
        self.pairs, self.keys = pairs, keys

    @property
    def min_length(self) -> int:
        return 2 * self.pairs + 1

    def sample_inputs(self, n, length, generator):
        P, K = self.pairs, self.keys
        keys = torch.rand(n, K, generator=generator).argsort(dim=1)[:, :P]  # distinct keys
        values = torch.randint(K, self.vocab_size, (n, P), generator=generator)
        which = torch.randint(0, P, (n, length - 2 * P), generator=generator)
        pairs = torch.stack([keys, values], dim=2).flatten(1)
        return torch.cat([pairs, keys.gather(1, which)], dim=1)

    def labels(self, inputs):
        P = self.pairs
        keys, values = inputs[:, 0:2 * P:2], inputs[:, 1:2 * P:2]
        queries = inputs[:, 2 * P:]
        match = queries[:, :, None] == keys[:, None, :]  # exactly one key matches
        answers = (match.long() * values[:, None, :]).sum(dim=2)
        labels = torch.full_like(inputs, IGNORE)
        labels[:, 2 * P:] = answers
        return labels


class KHop(Task):
    def __init__(self, symbols: int = 8) -> None:
        super().__init__("khop", symbols, symbols, k=2, symbols=symbols)

    def labels(self, inputs):
        n, length = inputs.shape
        rows = torch.arange(n)
        # successor[b, a]: token after the latest occurrence of a so far (-1: none yet)
        successor = torch.full((n, self.vocab_size), -1, dtype=torch.long)
        labels = torch.full_like(inputs, IGNORE)
        for t in range(length):
            if t > 0:  # x_{t-1} now has a successor: x_t
                successor[rows, inputs[:, t - 1]] = inputs[:, t]
            first = successor[rows, inputs[:, t]]
            second = successor[rows, first.clamp(min=0)]
            labels[:, t] = torch.where((first >= 0) & (second >= 0), second, IGNORE)
        return labels


TASKS: dict[str, Task] = {task.name: task for task in
                          (Parity(), MQAR(), KHop(), ModCount(), SymmetricGroup())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]
