"""Model FLOPs per token, for the model FLOPs utilisation (MFU) that training logs.

MFU = training FLOPs per token x tokens/s / peak bf16 FLOP/s of the device. Training
FLOPs per token = 3 x forward (the backward costs two forwards). Forward FLOPs per token:

* every matrix product: 2 x its weight count (all ``nn.Linear`` and multi-head projection
  weights, plus the output head tied to the embedding: 2 x vocab x d_model);
* attention, per attention layer (every layer of the Transformer, every ``attn_every``-th
  of a hybrid): ``QK^T`` and ``AV`` over the causal prefix, on average
  ``(T + 1) / 2`` keys per query: ``2 x 2 x d_model x (T + 1) / 2``;
* ParaGRU / ParaLSTM recurrence, per recurrent layer and hidden unit: one sequential cell step
  (:data:`CELL_STEP_FLOPS`, counting each add, multiply and activation as one FLOP).
  Model FLOPs, not what the Newton solver spends: its extra iterations are overhead;
* Mamba2, per layer: the recurrent form of the SSD, ``state = decay * state + x B^T``
  (3 per state entry) and ``y = C state`` (2 per state entry): ``5 x d_inner x d_state``;
* causal convolutions: ``2 x kernel x channels``.

Norms, residual adds, SwiGLU's gating and softmax are left out (under 1% at these sizes).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.projection import MultiHeadProjection

CELL_STEP_FLOPS = {"paragru": 18, "paralstm": 24}

# dense bf16 tensor-core peak (no sparsity) by device name
PEAK_BF16_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12}


def matmul_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules()
               if isinstance(m, (nn.Linear, MultiHeadProjection)))


def forward_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Forward FLOPs per token of a :class:`~pararnn.models.LanguageModel` (see module doc)."""
    cfg = model.cfg
    # a tied head is the embedding's matrix, which matmul_weights does not count
    flops = 2.0 * (matmul_weights(model) + (cfg.vocab_size * cfg.d_model if cfg.tied_head else 0))
    for kind, block in zip(cfg.block_models, model.blocks):  # a hybrid mixes two kinds
        mixer = block.mixer
        if kind == "transformer":
            flops += 2.0 * cfg.d_model * (seq_len + 1)
        elif kind == "mamba2":
            flops += 5.0 * mixer.d_inner * mixer.d_state
        else:
            flops += CELL_STEP_FLOPS[kind] * cfg.rnn_hidden
        conv = getattr(mixer, "conv", None)
        if conv is not None:
            flops += 2.0 * conv.weight.numel()
    return flops


def train_flops_per_token(model: nn.Module, seq_len: int) -> float:
    return 3.0 * forward_flops_per_token(model, seq_len)


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of a known GPU, or ``None`` (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)
