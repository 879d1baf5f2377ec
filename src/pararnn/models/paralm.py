"""The ParaRNN mixer: input projection -> ParaGRU / ParaLSTM -> output projection.

Training and prefill run the cell with the parallel Newton solver over the whole
sequence; decoding feeds one token at a time from the previous state
(:func:`recurrent_step`), so the state per layer is O(1) in the context length.

With the paper's block options (``conv_kernel``, ``gated_norm``; docs/DESIGN.md, "The language-model block") a
short causal depthwise convolution (+ SiLU) runs before the cell, and the cell output goes
through ``RMSNorm(h) * silu(W_g x)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import NewtonConfig, ParaGRU, ParaLSTM
from .blocks import CausalConv1d, GatedRMSNorm
from .config import ModelConfig


def recurrent_step(rnn: nn.Module, u: torch.Tensor, state):
    """One decode step ``(B, 1, N)`` of a ParaGRU/ParaLSTM layer from ``state``.

    The single place where decoding calls the cell: a faster fused step can replace the
    body without touching the model.
    """
    mode = rnn.mode
    rnn.mode = "sequential"
    try:
        return rnn(u, state)
    finally:
        rnn.mode = mode


class ParaRNNMixer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        n = cfg.rnn_hidden
        self.gated = cfg.gated_norm
        self.in_proj = nn.Linear(cfg.d_model, 2 * n if self.gated else n, bias=False)
        self.conv = CausalConv1d(n, cfg.conv_kernel) if cfg.conv_kernel > 0 else None
        layer = ParaGRU if cfg.model == "paragru" else ParaLSTM
        self.rnn = layer(n, n, num_heads=cfg.rnn_heads, recurrent_clip=cfg.recurrent_clip,
                         newton=NewtonConfig(max_iters=cfg.newton_iters))
        self.norm = GatedRMSNorm(n, cfg.norm_eps) if self.gated else None
        self.out_proj = nn.Linear(n, cfg.d_model, bias=False)

    def init_projections(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.in_proj.weight, 0.0, std)
        nn.init.normal_(self.out_proj.weight, 0.0, out_std)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        u = self.in_proj(x)
        if self.gated:
            u, gate = u.chunk(2, dim=-1)
        if self.conv is not None:
            u = F.silu(self.conv(u, cache))
        state = cache.get("rnn") if cache is not None else None
        if state is not None and u.shape[1] == 1:
            y, state = recurrent_step(self.rnn, u, state)
        else:
            y, state = self.rnn(u, state)
        if cache is not None:  # a copy: the final state may be a view of all T states
            cache["rnn"] = tuple(t.clone() for t in state) if isinstance(state, tuple) else state.clone()
        if self.gated:
            y = self.norm(y, gate)
        return self.out_proj(y.to(x.dtype))
