"""The ParaRNN mixer: input projection -> ParaGRU / ParaLSTM -> output projection.

Training and prefill run the cell over the whole sequence with ``mode="auto"`` (the
fused kernels or Newton on a GPU, the step loop on a CPU for wide steps); decoding feeds
one token at a time from the previous state (:func:`recurrent_step`), so the state per
layer is O(1) in the context length. A
:class:`~pararnn.models.lm.StaticCache` holds that state in buffers updated in place,
so that a decode step can be captured in a CUDA graph (``pararnn.generation``).

With the paper's block options (``conv_kernel``, ``gated_norm``; docs/DESIGN.md, "The language-model
block") a short causal depthwise convolution (+ SiLU) runs before the cell, and the cell output
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

import torch
import torch.nn.functional as F
from torch import nn

from ..cells import ParaLSTMCell
from ..layers.projected import ParaGRU, ParaLSTM
from ..layers.projection import MultiHeadProjection, kaiming_uniform_
from ..solver import NewtonConfig
from .lm import _TRITON, CausalConv1d, GatedRMSNorm, RMSNorm, StaticCache, state_dtype
from .config import ModelConfig


# Device types whose decode steps run the Triton kernels (the CPU tests add "cpu" under
# Triton's interpreter).
_KERNEL_DEVICES = ("cuda",)
#: Largest batch whose decode step computes the cell's input projection inside the cell
#: step's kernel (one matrix-vector product per row, weights reread per row); larger
#: batches run the projection as a GEMM (cuBLAS) before the fused cell step. 0: never.
FUSED_PROJECTION_MAX_BATCH = 16


def recurrent_step(rnn: nn.Module, u: torch.Tensor, state, out=None):
    """One decode step ``(B, 1, N)`` of a ParaGRU/ParaLSTM layer from ``state``: the
    multi-head projection of the one input, then one cell step (no solver, and the
    layer's ``mode`` is left alone). ``state`` is what the layer takes: ``h`` for ParaGRU,
    ``(h, c)`` for ParaLSTM. Returns ``(y (B, 1, N), new_state)``; the new state is
    written into ``out`` (a tuple of tensors like ``(h,)`` or ``(h, c)``; may be the
    state itself) when given.

    On CUDA the cell step is one fused Triton kernel (:mod:`pararnn.kernels.decode_step`,
    float32 math, a custom operator that ``torch.compile`` traces), which up to
    :data:`FUSED_PROJECTION_MAX_BATCH` rows also computes the projection; elsewhere, in
    float64 and for a cell or projection whose subclass changes the computation, the
    layer's own ``projection`` and ``cell.step``.
    """
    lstm = isinstance(rnn, ParaLSTM)
    states = tuple(state) if lstm else (state,)
    x = u[:, 0]
    kernels = (x.device.type in _KERNEL_DEVICES and _TRITON and rnn.cell.fused_solver() is not None
               and torch.float64 not in (x.dtype, states[0].dtype))
    if not kernels:
        pre = rnn.projection(x)
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

    from ..kernels import decode_step
    states = tuple(s.contiguous() for s in states)
    if out is None:
        out = tuple(torch.empty(s.shape, device=s.device, dtype=state_dtype(s.dtype)) for s in states)
    projected = _projection_operands(rnn.projection, x)
    if projected is not None:
        x, weight = projected
        bias = rnn.projection.bias
        if lstm:
            new = decode_step.lstm_projected_step(x, weight, bias, rnn.cell, *states, out=out)
        else:
            new = (decode_step.gru_projected_step(x, weight, bias, rnn.cell, states[0], out=out[0]),)
    else:
        pre = rnn.projection(x).contiguous()
        if lstm:
            new = decode_step.lstm_step(pre, rnn.cell, *states, out=out)
        else:
            new = (decode_step.gru_step(pre, rnn.cell, states[0], out=out[0]),)
    return new[0][:, None], (tuple(new) if lstm else new[0])


def _projection_operands(projection: nn.Module, x: torch.Tensor):
    """``(x, weight)`` as ``projection`` would multiply them (both in the autocast dtype
    under autocast; ``x`` contiguous) when the projected decode kernel applies to them, else
    None: a batch above :data:`FUSED_PROJECTION_MAX_BATCH`, a subclass of the projection,
    or dtypes other than one float32 or bfloat16 for both."""
    if x.shape[0] > FUSED_PROJECTION_MAX_BATCH or type(projection) is not MultiHeadProjection:
        return None
    weight, device = projection.weight, x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
    if x.dtype != weight.dtype or x.dtype not in (torch.float32, torch.bfloat16):
        return None
    # a strided x (a chunk of the input projection) is copied: a stride passed to the
    # kernel would be the traced one, which a compiler need not keep for a tensor it lays
    # out itself
    return x.contiguous(), weight


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
                         newton=NewtonConfig(max_iters=cfg.newton_iters,
                                             boundary_rounds=cfg.newton_iters))
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
            u = self.conv(u, cache, silu=True)
        y = self._recur(u, cache)
        if isinstance(self.norm, GatedRMSNorm):
            y = self.norm(y, gate, kernel=cache is None)
        elif self.norm is not None:
            y = self.norm(y)
        elif self.gated:
            y = y * F.silu(gate)
        if not torch.is_autocast_enabled(y.device.type):  # under autocast out_proj casts y
            y = y.to(x.dtype)
        return self.out_proj(y)

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
        if cache is not None:
            cache["rnn"] = state
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
