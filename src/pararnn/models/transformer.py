"""Causal multi-head attention with rotary position embeddings and a KV cache.

The dynamic cache grows its KV buffers as needed; the static one (:class:`StaticCache`)
is allocated to the maximum length once, and a decode step writes its key and value at
the position held in a tensor, attending over the whole buffer with the positions not
yet written masked out, so that the step has fixed shapes (CUDA-graph capturable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .lm import StaticCache
from .config import ModelConfig

DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x`` ``(B, H, T, D)`` at integer ``positions`` ``(T,)``: rotate the pairs
    ``(x[i], x[i + D/2])`` by ``position * inv_freq[i]`` (computed in float32)."""
    angles = positions.float()[:, None] * inv_freq[None, :]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


def rope_frequencies(head_dim: int, base: float) -> torch.Tensor:
    """RoPE's ``inv_freq`` ``(head_dim / 2,)``: ``base^(-2i / head_dim)``."""
    return base ** (-torch.arange(0, head_dim, 2).float() / head_dim)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rope_base = cfg.rope_base
        self.register_buffer("inv_freq", rope_frequencies(self.head_dim, cfg.rope_base), persistent=False)

    def init_projections(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.qkv.weight, 0.0, std)
        nn.init.normal_(self.out_proj.weight, 0.0, out_std)

    def rotated_qkv(self, x: torch.Tensor, positions: torch.Tensor):
        """Queries, keys and values ``(B, H, T, head_dim)`` of ``x`` ``(B, T, D)``, queries and
        keys rotated to their ``positions`` ``(T,)``."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return rotate(q, positions, self.inv_freq), rotate(k, positions, self.inv_freq), v

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        if isinstance(cache, StaticCache):
            return self._static_step(x, cache)
        B, T, D = x.shape
        start = 0 if cache is None else cache.get("pos", 0)
        positions = torch.arange(start, start + T, device=x.device)
        q, k, v = self.rotated_qkv(x, positions)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k, v = self._append(cache, k, v, start)
            # query i sits at position start + i and sees keys 0 .. start + i
            mask = None if T == 1 else torch.arange(start + T, device=x.device)[None, :] <= positions[:, None]
            # every decode step has a new key length; cuDNN's attention would build a new
            # plan for each, so decoding uses the other backends
            with sdpa_kernel(DECODE_BACKENDS):
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))

    @staticmethod
    def _append(cache: dict, k: torch.Tensor, v: torch.Tensor, start: int):
        """Write ``k, v`` at ``start`` into the cache (doubling its buffers when full) and
        return views of every cached position."""
        end = start + k.shape[2]
        if "k" not in cache or cache["k"].shape[2] < end:
            capacity = max(end, 2 * cache["k"].shape[2] if "k" in cache else 256)
            for name, new in (("k", k), ("v", v)):
                buf = new.new_empty(*new.shape[:2], capacity, new.shape[3])
                if name in cache:
                    buf[:, :, :start] = cache[name][:, :, :start]
                cache[name] = buf
        cache["k"][:, :, start:end] = k
        cache["v"][:, :, start:end] = v
        cache["pos"] = end
        return cache["k"][:, :, :end], cache["v"][:, :, :end]

    def static_cache(self, batch: int, max_len: int, device, dtype: torch.dtype) -> StaticCache:
        shape = (batch, self.n_heads, max_len, self.head_dim)
        return StaticCache(k=torch.zeros(shape, device=device, dtype=dtype),
                           v=torch.zeros(shape, device=device, dtype=dtype),
                           pos=torch.zeros((), device=device, dtype=torch.long))

    def load_cache(self, static: StaticCache, dynamic: dict) -> None:
        end = dynamic["pos"]
        if end >= static["k"].shape[2]:
            raise ValueError(f"a prompt of {end} tokens leaves no room in a KV cache of "
                             f"{static['k'].shape[2]} positions")
        static["k"][:, :, :end].copy_(dynamic["k"][:, :, :end])
        static["v"][:, :, :end].copy_(dynamic["v"][:, :, :end])
        static["pos"].fill_(end)

    def _static_step(self, x: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        """One token ``x`` ``(B, 1, D)`` at position ``cache["pos"]``, which moves on by one.
        Attention is two batched matrix products over the whole buffer, which cuBLAS
        spreads over the key positions (a fused attention kernel would use only B x H
        blocks for one query); scores in the cache dtype, softmax in float32."""
        B, T, D = x.shape
        pos = cache["pos"].view(1)
        q, k, v = self.rotated_qkv(x, pos)
        keys, values = cache["k"], cache["v"]
        keys.index_copy_(2, pos, k.to(keys.dtype))
        values.index_copy_(2, pos, v.to(values.dtype))
        score_dtype = torch.promote_types(keys.dtype, torch.float32)
        scores = torch.matmul(q.to(keys.dtype), keys.transpose(2, 3)).to(score_dtype) / self.head_dim ** 0.5
        unwritten = torch.arange(keys.shape[2], device=x.device) > pos
        weights = scores.masked_fill(unwritten, float("-inf")).softmax(-1).to(values.dtype)
        y = torch.matmul(weights, values)
        cache["pos"].add_(1)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D).to(x.dtype))
