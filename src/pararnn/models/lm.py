"""The shared language-model skeleton: norms, SwiGLU, residual blocks and the LM itself.

A *mixer* is the sequence-mixing module of a block (ParaRNN, attention or Mamba2; a
hybrid model has ParaRNN and attention blocks). Each mixer implements
``forward(x, cache=None) -> y`` with ``x`` of shape ``(B, T, d_model)``:

* ``cache=None``: training / scoring: the whole sequence at once, from an empty state;
* ``cache`` a dict from :meth:`LanguageModel.new_caches`: continue from the state the
  dict holds (empty at first) and leave the state after ``x`` in it. A prompt goes in
  whole (prefill, parallel), then one token at a time (decode, ``T == 1``);
* ``cache`` a :class:`StaticCache` (from ``mixer.static_cache``, filled by
  ``mixer.load_cache`` after a prefill): one token (``T == 1``) whose step updates
  fixed pre-allocated buffers in place, with no host synchronisation and no allocation
  that outlives the call, so that :mod:`pararnn.generation` can capture it in a CUDA graph.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import triton_available
from .config import ModelConfig, transformer_block_params, round_up
from .cpu_chunked import CausalConvSiLU, GatedRMSNormFn, use_chunked

# decided once, not per step: a compiled decode step would trace the cached lookup (and warn)
_TRITON = triton_available()
# Device types whose causal conv and gated norm run their fused Triton kernels (the CPU
# tests add "cpu" under Triton's interpreter), and the input dtypes they take there.
_KERNEL_DEVICES = ("cuda",)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# the widest rows the gated norm's kernel takes (kernels/gated_norm.py, MAX_WIDTH; a
# constant here, so that the module need not import Triton to decide)
_NORM_MAX_WIDTH = 4096


class StaticCache(dict):
    """A mixer's decode state in buffers allocated once and updated in place.

    Same keys as the mixer's dynamic cache dict; a KV cache is pre-allocated to the
    maximum length, with the next position held in a tensor.
    """


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Recurrent states stay in at least float32 whatever the activation dtype (a bf16
    state would round away the small updates of long contexts)."""
    return torch.promote_types(dtype, torch.float32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class GatedRMSNorm(RMSNorm):
    """``RMSNorm(y) * silu(gate)``: the norm after the cell in the ParaRNN paper's block.
    On CUDA one Triton kernel each way (:func:`pararnn.kernels.gated_norm.gated_rms_norm`,
    float32 math; under autocast its output is in the autocast dtype) unless ``kernel`` is
    False (the mixer's decode steps and prefill with a cache, as the conv's: a step's few
    rows are left to the plain ops, which a compiled decode step fuses with their
    neighbours rather than launch one more kernel); training on the CPU one chunked
    autograd Function (:mod:`pararnn.models.cpu_chunked`); float64 and the rest the plain
    ops."""

    def forward(self, y: torch.Tensor, gate: torch.Tensor, kernel: bool = True) -> torch.Tensor:
        if (kernel and y.device.type in _KERNEL_DEVICES and _TRITON and y.dtype in _KERNEL_DTYPES
                and gate.dtype in _KERNEL_DTYPES and y.shape[-1] <= _NORM_MAX_WIDTH and y.dim() == 3):
            from ..kernels.gated_norm import gated_rms_norm
            return gated_rms_norm(y, gate, self.weight, self.eps)
        if use_chunked(y) and y.dtype == gate.dtype == self.weight.dtype:
            return GatedRMSNormFn.apply(y, gate, self.weight, self.eps)
        return super().forward(y) * F.silu(gate)


class CausalConv1d(nn.Module):
    """Depthwise causal convolution over time with a decode cache of the last ``k-1`` inputs."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.uniform_(self.weight, -1 / math.sqrt(kernel_size), 1 / math.sqrt(kernel_size))

    def forward(self, x: torch.Tensor, cache: dict | None = None, key: str = "conv",
                silu: bool = False) -> torch.Tensor:
        """``x``: ``(B, T, C)`` -> ``(B, T, C)``; output ``t`` sees inputs ``t-k+1 .. t``.
        ``silu=True`` applies SiLU to the output. Fused with the conv: on CUDA without a
        cache (training, scoring) one Triton kernel each way
        (:func:`pararnn.kernels.causal_conv.causal_conv1d`, float32 math); on the CPU, for
        training, :mod:`pararnn.models.cpu_chunked`; in a CUDA decode step, inside its kernel.
        Prefill (a dict cache), float64 and the rest run the plain PyTorch ops."""
        if cache is None and x.device.type in _KERNEL_DEVICES and x.dtype in _KERNEL_DTYPES and _TRITON:
            from ..kernels.causal_conv import causal_conv1d
            return causal_conv1d(x, self.weight, self.bias, silu)
        if cache is None and silu and use_chunked(x) and x.dtype == self.weight.dtype:
            return CausalConvSiLU.apply(x, self.weight, self.bias)
        if isinstance(cache, StaticCache):
            return self.static_step(x, cache[key], silu=silu)
        y = self._conv(x, cache, key)
        return F.silu(y) if silu else y

    def _conv(self, x: torch.Tensor, cache: dict | None, key: str) -> torch.Tensor:
        B, T, C = x.shape
        xt = x.transpose(1, 2)
        past = cache.get(key) if cache is not None else None
        if past is None:
            past = xt.new_zeros(B, C, self.kernel_size - 1)
        xt = torch.cat([past.to(xt.dtype), xt], dim=2)
        if cache is not None:  # a copy, not a view that would keep all of xt alive
            cache[key] = xt[:, :, xt.shape[2] - (self.kernel_size - 1):].detach().clone()
        y = F.conv1d(xt, self.weight.to(xt.dtype), self.bias.to(xt.dtype), groups=C)
        return y.transpose(1, 2)

    def static_step(self, x: torch.Tensor, window: torch.Tensor, silu: bool = False) -> torch.Tensor:
        """One token ``x`` ``(B, 1, C)`` with the last ``k-1`` inputs in ``window``
        ``(B, C, k-1)``, which is updated in place (``silu``: SiLU of the output). On CUDA
        one fused Triton kernel (:func:`pararnn.kernels.decode_step.conv_step`, float32
        math, the SiLU included), elsewhere and in float64 PyTorch in the window's dtype."""
        if x.is_cuda and window.dtype != torch.float64 and _TRITON:
            from ..kernels import decode_step
            return decode_step.conv_step(x[:, 0], window, self.weight, self.bias, silu=silu)[:, None]
        xt = torch.cat([window, x.transpose(1, 2).to(window.dtype)], dim=2)
        window.copy_(xt[:, :, 1:])
        y = (xt * self.weight[:, 0].to(xt.dtype)).sum(-1) + self.bias.to(xt.dtype)
        return (F.silu(y) if silu else y)[:, None]


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, mixer: nn.Module, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = mixer
        has_mlp = mlp_hidden > 0  # mlp_hidden=0: a mixer-only block
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps) if has_mlp else None
        self.mlp = SwiGLU(cfg.d_model, mlp_hidden) if has_mlp else None
        self.scale1 = nn.Parameter(torch.ones(cfg.d_model)) if cfg.residual_scale else None
        self.scale2 = nn.Parameter(torch.ones(cfg.d_model)) if cfg.residual_scale and has_mlp else None

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        y = self.mixer(self.norm1(x), cache)
        x = x + (y if self.scale1 is None else self.scale1.to(y.dtype) * y)
        if self.mlp is None:
            return x
        y = self.mlp(self.norm2(x))
        return x + (y if self.scale2 is None else self.scale2.to(y.dtype) * y)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def matched_mlp_hidden(cfg: ModelConfig, mixer_params: int) -> int:
    """SwiGLU width that brings a block to the Transformer block's parameter count."""
    multiple = 64 if cfg.d_model >= 512 else 16  # coarse steps would overshoot small models
    spare = transformer_block_params(cfg.d_model) - mixer_params
    return max(multiple, round_up(round(spare / (3 * cfg.d_model)), multiple))


class LanguageModel(nn.Module):
    """Embedding -> ``n_layers`` x :class:`Block` -> RMSNorm -> output head (tied to the
    embedding unless ``cfg.tied_head`` is False).

    ``mixer_class(name)`` is the mixer class of a model name, built as ``mixer_class(name)(cfg)``
    for each block of ``cfg.block_models``; use :func:`pararnn.models.build_model`.

    Unless ``cfg.mlp_hidden`` is given, each block's SwiGLU width is matched to its mixer
    (:func:`matched_mlp_hidden`). A model of one kind of block records that width in
    ``self.cfg.mlp_hidden``; a hybrid has two and keeps ``mlp_hidden=None``: both follow
    from the config again when a checkpoint is loaded.
    """

    def __init__(self, cfg: ModelConfig, mixer_class) -> None:
        super().__init__()
        mixers = {name: mixer_class(name) for name in cfg.block_models}
        if cfg.mlp_hidden is None:
            with torch.device("meta"):
                widths = {name: matched_mlp_hidden(cfg, count_params(make(cfg))) for name, make in mixers.items()}
            if len(widths) == 1:  # resolved on a copy: the caller's config stays as it was
                cfg = dataclasses.replace(cfg, mlp_hidden=widths[cfg.block_models[0]])
        else:
            widths = dict.fromkeys(mixers, cfg.mlp_hidden)
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, mixers[name](cfg), widths[name]) for name in cfg.block_models)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = None if cfg.tied_head else nn.Linear(cfg.d_model, cfg.output_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style: N(0, ``init_std`` = 0.02) for the embedding and the block projections, scaled by
        ``1/sqrt(2 n_layers)`` for the projections that write into the residual stream.
        Mixers initialise their own internals (cell parameters, conv, SSM parameters)."""
        std = self.cfg.init_std
        nn.init.normal_(self.embed.weight, 0.0, std)
        if self.head is not None:
            nn.init.normal_(self.head.weight, 0.0, std)
        for block in self.blocks:
            if block.mlp is not None:
                nn.init.normal_(block.mlp.gate_up.weight, 0.0, std)
                nn.init.normal_(block.mlp.down.weight, 0.0, std / math.sqrt(2 * self.cfg.n_layers))
            block.mixer.init_projections(std, std / math.sqrt(2 * self.cfg.n_layers))

    def num_params(self, non_embedding: bool = False) -> int:
        n = count_params(self)
        return n - self.embed.weight.numel() if non_embedding else n

    def new_caches(self) -> list[dict]:
        """Empty per-layer decode states; pass them to :meth:`forward` (see module doc)."""
        return [{} for _ in self.blocks]

    def static_caches(self, batch: int, max_len: int, device, dtype: torch.dtype) -> list[StaticCache]:
        """Per-layer decode buffers for ``batch`` sequences of up to ``max_len`` tokens, with
        activations (conv windows, KV cache) in ``dtype``; see the module doc."""
        return [block.mixer.static_cache(batch, max_len, device, dtype) for block in self.blocks]

    def load_caches(self, static: list[StaticCache], dynamic: list[dict]) -> None:
        """Copy the per-layer states a prefill left in ``dynamic`` into ``static``."""
        for block, s, d in zip(self.blocks, static, dynamic):
            block.mixer.load_cache(s, d)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list[dict] | None = None, last_only: bool = False) -> torch.Tensor:
        """``idx`` ``(B, T)`` -> logits ``(B, T, V)`` (``(B, 1, V)`` with ``last_only``, as a
        prefill needs); with ``targets``: mean cross-entropy."""
        x = self.embed(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        x = self.norm(x[:, -1:] if last_only else x)
        head = self.embed.weight if self.head is None else self.head.weight
        logits = F.linear(x, head.to(x.dtype))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None):
        """Yield ``max_new_tokens`` sampled tokens ``(B,)`` one by one after prompt ``idx``:
        :class:`pararnn.generation.Generator` (parallel prefill, then recurrent steps).
        A Generator made for one call does not compile its step (compiling takes seconds);
        keep a Generator to decode many sequences faster."""
        from ..generation import Generator, SamplingConfig
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
        yield from Generator(self, compile=False).stream(idx, max_new_tokens, sampling, generator=generator)


def cache_tensors(caches: list[dict]) -> list[torch.Tensor]:
    """Every tensor held in decode caches."""
    found = []
    for cache in caches:
        for value in cache.values():
            found += [t for t in (value if isinstance(value, (tuple, list)) else (value,))
                      if isinstance(t, torch.Tensor)]
    return found


def sample(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row of ``logits`` ``(B, V)``; ``temperature=0`` is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
