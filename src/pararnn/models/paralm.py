"""The ParaRNN mixer: input projection -> ParaGRU / ParaLSTM -> output projection.

Training and prefill run the cell with the parallel Newton solver over the whole
sequence; decoding feeds one token at a time from the previous state
(:func:`recurrent_step`), so the state per layer is O(1) in the context length. A
:class:`~pararnn.models.blocks.StaticCache` holds that state in buffers updated in place,
so that a decode step can be captured in a CUDA graph (``pararnn.generation``).

With the paper's block options (``conv_kernel``, ``gated_norm``; DESIGN.md section 2) a
short causal depthwise convolution (+ SiLU) runs before the cell, and the cell output goes
through ``RMSNorm(h) * silu(W_g x)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import NewtonConfig, ParaGRU, ParaLSTM
from ..cells import ParaLSTMCell
from ..kernels import triton_available
from .blocks import CausalConv1d, GatedRMSNorm, StaticCache, state_dtype
from .config import ModelConfig


def recurrent_step(rnn: nn.Module, u: torch.Tensor, state, out=None):
    """One decode step ``(B, 1, N)`` of a ParaGRU/ParaLSTM layer from ``state``: the
    multi-head projection of the one input, then one cell step (no solver, and the
    layer's ``mode`` is left alone). ``state`` is what the layer takes: ``h`` for ParaGRU,
    ``(h, c)`` for ParaLSTM. Returns ``(y (B, 1, N), new_state)``; the new state is
    written into ``out`` (a tuple of tensors like ``(h,)`` or ``(h, c)``) when given.

    On CUDA the cell step is one fused Triton kernel (:mod:`pararnn.kernels.decode_step`,
    float32 math), elsewhere and in float64 the cell's own ``step``.
    """
    pre = rnn.projection(u[:, 0])
    lstm = isinstance(rnn, ParaLSTM)
    states = tuple(state) if lstm else (state,)
    if pre.is_cuda and torch.float64 not in (pre.dtype, states[0].dtype) and triton_available():
        from ..kernels import decode_step
        pre, states = pre.contiguous(), tuple(s.contiguous() for s in states)
        if out is None:
            out = tuple(torch.empty(s.shape, device=s.device, dtype=state_dtype(s.dtype)) for s in states)
        if lstm:
            new = decode_step.lstm_step(pre, rnn.cell, *states, out=out)
        else:
            new = (decode_step.gru_step(pre, rnn.cell, states[0], out=out[0]),)
    else:
        if lstm:
            packed = rnn.cell.step(pre, ParaLSTMCell.pack_state(*states))
            new = ParaLSTMCell.unpack_state(packed)
        else:
            new = (rnn.cell.step(pre, states[0]),)
        if out is not None:
            for buffer, value in zip(out, new):
                buffer.copy_(value)
            new = out
    return new[0][:, None], (tuple(new) if lstm else new[0])


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
        y = self._recur(u, cache)
        if self.gated:
            y = self.norm(y, gate)
        return self.out_proj(y.to(x.dtype))

    def _recur(self, u: torch.Tensor, cache: dict | None) -> torch.Tensor:
        """The cell over ``u``: a parallel solve from the cached (or zero) state, or one
        :func:`recurrent_step` for a single token after it; a :class:`StaticCache`'s
        buffers are updated in place."""
        if isinstance(cache, StaticCache):
            buffers = cache["rnn"]
            y, _ = recurrent_step(self.rnn, u, buffers if len(buffers) == 2 else buffers[0], out=buffers)
            return y
        state = cache.get("rnn") if cache is not None else None
        if state is not None and u.shape[1] == 1:
            y, state = recurrent_step(self.rnn, u, state)
        else:
            y, state = self.rnn(u, state)
        if cache is not None:  # a copy: the final state may be a view of all T states
            cache["rnn"] = tuple(t.clone() for t in state) if isinstance(state, tuple) else state.clone()
        return y

    def static_cache(self, batch: int, max_len: int, device, dtype: torch.dtype) -> StaticCache:
        """Zeroed decode buffers (the state at the start of a sequence); ``max_len`` is
        unused: the state does not grow with the context."""
        n, sdtype = self.rnn.hidden_size, state_dtype(dtype)
        cache = StaticCache(rnn=tuple(torch.zeros(batch, n, device=device, dtype=sdtype)
                                      for _ in range(2 if isinstance(self.rnn, ParaLSTM) else 1)))
        if self.conv is not None:
            channels = self.conv.weight.shape[0]
            cache["conv"] = torch.zeros(batch, channels, self.conv.kernel_size - 1, device=device, dtype=dtype)
        return cache

    def load_cache(self, static: StaticCache, dynamic: dict) -> None:
        """Copy the state a prefill left in ``dynamic`` into the buffers of ``static``."""
        state = dynamic["rnn"]
        for buffer, value in zip(static["rnn"], state if isinstance(state, tuple) else (state,)):
            buffer.copy_(value)
        if self.conv is not None:
            static["conv"].copy_(dynamic["conv"])
