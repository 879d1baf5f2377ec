"""The ParaRNN mixer: input projection -> ParaGRU / ParaLSTM -> output projection.

Training and prefill run the cell with the parallel Newton solver over the whole
sequence; decoding feeds one token at a time from the previous state
(:func:`recurrent_step`), so the state per layer is O(1) in the context length.

With the paper's block options (``conv_kernel``, ``gated_norm``; docs/DESIGN.md section 2)
a short causal depthwise convolution (+ SiLU) runs before the cell, and the cell output
goes through ``RMSNorm(h) * silu(W_g x)``. ``rnn_output`` picks the parts of that output
stage on their own: ``none``, ``norm`` (``RMSNorm(h)``), ``gate`` (``h * silu(W_g x)``)
or ``gated_norm``.

``rnn_in_proj=False`` drops the ``d_model -> n`` input projection: the cell's own
multi-head projection reads the block input, and the gated norm gets its own
``d_model -> n`` gate projection. The convolution then runs on the ``d_model`` block
input, in the place of the dropped projection: the block is the default one with
``in_proj`` replaced by the identity, so the ablation changes one thing only (a conv on
the ``3n`` gate pre-activations would also change what the conv sees and triple its size).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.reference_layers import ParaGRU, ParaLSTM
from ..solver import NewtonConfig
from .blocks import CausalConv1d, GatedRMSNorm, RMSNorm
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


def kaiming_uniform_(weight: torch.Tensor) -> None:
    """Uniform with variance ``1 / fan_in`` (fan-in: the last dimension)."""
    bound = math.sqrt(3.0 / weight.shape[-1])
    nn.init.uniform_(weight, -bound, bound)


class ParaRNNMixer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        n, d = cfg.rnn_hidden, cfg.d_model
        output = cfg.rnn_output or ("gated_norm" if cfg.gated_norm else "none")
        self.gated = output in ("gate", "gated_norm")
        self.init_scheme = cfg.rnn_init
        self.forget_bias = cfg.rnn_forget_bias
        self.memory = cfg.rnn_memory
        if cfg.rnn_in_proj:  # the gate shares the input projection's matrix
            self.in_proj = nn.Linear(d, 2 * n if self.gated else n, bias=False)
            self.gate_proj = None
        else:
            self.in_proj = None
            self.gate_proj = nn.Linear(d, n, bias=False) if self.gated else None
        cell_input = n if cfg.rnn_in_proj else d
        self.conv = CausalConv1d(cell_input, cfg.conv_kernel) if cfg.conv_kernel > 0 else None
        layer = ParaGRU if cfg.model == "paragru" else ParaLSTM
        self.rnn = layer(cell_input, n, num_heads=cfg.rnn_heads, recurrent_clip=cfg.recurrent_clip,
                         newton=NewtonConfig(max_iters=cfg.newton_iters))
        if output == "gated_norm":
            self.norm = GatedRMSNorm(n, cfg.norm_eps)
        elif output == "norm":
            self.norm = RMSNorm(n, cfg.norm_eps)
        else:
            self.norm = None
        self.out_proj = nn.Linear(n, d, bias=False)

    def init_projections(self, std: float, out_std: float) -> None:
        """Initialise the mixer (called by the LM after construction).

        * ``rnn_init="gpt2"``: the maps that read the block input (``in_proj``, the gate
          projection, or the cell's projection without ``in_proj``) N(0, ``std``); a cell
          projection fed by ``in_proj`` keeps its Kaiming-uniform init;
        * ``rnn_init="paper"``: every map into the cell Kaiming-uniform (variance
          1 / fan-in), recurrent vectors (``a``, peepholes) Xavier-Gaussian, biases 0.

        Both: ``out_proj`` N(0, ``out_std``) (it writes into the residual stream), then
        the memory gate's bias is set from ``rnn_forget_bias`` or ``rnn_memory``.
        """
        reads_input = [m.weight for m in (self.in_proj, self.gate_proj) if m is not None]
        if self.in_proj is None:
            reads_input.append(self.rnn.projection.weight)
        if self.init_scheme == "gpt2":
            for weight in reads_input:
                nn.init.normal_(weight, 0.0, std)
        else:
            for weight in {id(w): w for w in reads_input + [self.rnn.projection.weight]}.values():
                kaiming_uniform_(weight)
            self.rnn.cell.reset_parameters()
        nn.init.normal_(self.out_proj.weight, 0.0, out_std)
        # gate 0 is the GRU's update gate z (h' = z*cand + (1-z)*h: keep h when z is
        # small) and the LSTM's forget gate f (c' = f*c + (1-f)*cand: keep c when f is large)
        sign = -1.0 if isinstance(self.rnn, ParaGRU) else 1.0
        bias = self.rnn.cell.bias
        with torch.no_grad():
            if self.memory:  # chrono init: time constant tau ~ U[2, memory], share s = 1 / tau
                tau = torch.empty_like(bias[0], dtype=torch.float64).uniform_(2.0, self.memory)
                bias[0].copy_(-sign * torch.logit(1.0 / tau))  # GRU z = s, LSTM f = 1 - s
            elif self.forget_bias:
                bias[0].fill_(sign * self.forget_bias)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        if self.in_proj is None:
            u = x
            gate = self.gate_proj(x) if self.gated else None
        else:
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
        if isinstance(self.norm, GatedRMSNorm):
            y = self.norm(y, gate)
        elif self.norm is not None:
            y = self.norm(y)
        elif self.gated:
            y = y * F.silu(gate)
        return self.out_proj(y.to(x.dtype))
