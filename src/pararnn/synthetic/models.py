"""The one-layer models of the ParaRNN paper's synthetic benchmarks (Table 1, App. C.2).

Embedding -> RMSNorm -> mixer -> residual -> RMSNorm -> linear head over the task's
classes; no MLP. Width 64, recurrent state 64, 4 heads. The ParaRNN mixers use the
paper's block (short causal conv, gated RMSNorm, scaled residual, recurrent weights
clipped to 0.9) except on parity, where the paper runs the bare cell: no conv, no gated
norm, no clipping. Counting mod 5 and S5 get the bare cell too: like parity they need a
channel to cycle between states, which a clipped (contracting) cell cannot do. The
Transformer (RoPE) and Mamba2 mixers are the library's own, at the same width (Mamba2:
state 64, 4 heads of 32 channels).

The paper block is initialised as in the paper (``rnn_init="paper"``: Kaiming-uniform
projections into the cell, Xavier recurrent vectors) and its memory gate with the chrono
init (time constants spread over 2..64 steps, ``rnn_memory=64``) instead of a gate at
1/2, which forgets within a few steps: MQAR and k-hop must keep what they read for up to
the whole sequence, and with gates at 1/2 the gradient from a query to its key-value
pair vanishes before training can open them. On the CPU (MQAR, lr 3e-3, batches of 64),
validation accuracy with neither / the chrono init / both: ParaGRU 12 / 27 / 33% after
300 steps, ParaLSTM 6 / 18 / 31% after 200. The bare cells keep the library's default
init, with which the paper's parity result reproduces.
"""

from __future__ import annotations

from ..models import ModelConfig, build_model, preset
from ..models.lm import LanguageModel
from .tasks import Task

# test accuracy (%) of the paper's Table 1 (best of 3 seeds); None: not in the paper
PAPER_ACCURACY: dict[str, dict[str, float | None]] = {
    "mqar": {"transformer": 100, "mamba2": 100, "paragru": 100, "paralstm": 100},
    "khop": {"transformer": 78, "mamba2": 98, "paragru": 100, "paralstm": 100},
    "parity": {"transformer": 53, "mamba2": 51, "paragru": 100, "paralstm": 100},
}

PAPER_SETUP = ("paper (ParaRNN, Table 1): 1 layer, width 64, state 64, 4 heads, no MLP; "
               "length 100, 10k train / 100k test sequences, AdamW + cosine LR from 5e-4, best of 3 seeds")

WIDTH = 64
HEADS = 4


def paper_accuracy(task: str, model: str) -> float | None:
    return PAPER_ACCURACY.get(task, {}).get(model)


BLOCKS = ("auto", "paper", "bare")
# tasks on which "auto" runs the bare cell (the paper's choice for parity)
BARE_TASKS = ("parity", "modcount", "s5")
MEMORY = 64.0  # the paper block's chrono init: memory-gate time constants in [2, MEMORY] steps


def synthetic_config(task: Task, model: str, *, block: str = "auto", width: int = WIDTH,
                     heads: int = HEADS, **overrides) -> ModelConfig:
    """The paper's one-layer ``model`` for ``task`` (see the module doc).

    ``block``: ``"auto"`` is ``"bare"`` on :data:`BARE_TASKS` (the paper's choice for
    parity), ``"paper"`` otherwise; ``"paper"``: causal conv, gated RMSNorm, scaled
    residuals, recurrent clip 0.9, the paper's init with the chrono memory gate;
    ``"bare"``: none of them, no clipping, the library's default init.
    """
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {block!r}")
    bare = task.name in BARE_TASKS if block == "auto" else block == "bare"
    fields = dict(d_model=width, n_layers=1, mlp_hidden=0, tied_head=False,
                  output_size=task.num_classes, n_heads=heads,
                  # ParaRNN mixers: hidden state = width, `heads` input-projection heads
                  rnn_hidden=width, rnn_heads=heads, recurrent_clip=None if bare else 0.9,
                  rnn_memory=0.0 if bare else MEMORY, rnn_init="gpt2" if bare else "paper",
                  # Mamba2: d_inner = 2 * width in `heads` heads, state 64
                  mamba_d_state=64, mamba_headdim=2 * width // heads)
    fields.update(overrides)
    return preset(model, vocab_size=task.vocab_size, block="standard" if bare else "paper", **fields)


def build_synthetic_model(task: Task, model: str, **overrides) -> LanguageModel:
    return build_model(synthetic_config(task, model, **overrides))
