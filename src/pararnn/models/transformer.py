"""Causal multi-head attention with rotary position embeddings and a KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

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


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        inv_freq = cfg.rope_base ** (-torch.arange(0, self.head_dim, 2).float() / self.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def init_projections(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.qkv.weight, 0.0, std)
        nn.init.normal_(self.out_proj.weight, 0.0, out_std)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        start = 0 if cache is None else cache.get("pos", 0)
        positions = torch.arange(start, start + T, device=x.device)
        q, k = rotate(q, positions, self.inv_freq), rotate(k, positions, self.inv_freq)
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
