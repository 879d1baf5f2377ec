"""The Mamba2 mixer (SSD), with mamba-ssm's Triton kernels on GPU and a PyTorch fallback.

Per head ``h`` (``P`` channels, state size ``N``), with ``dt_t = softplus(dt_raw + dt_bias)``
and ``A = -exp(A_log)`` (a scalar per head):

    S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T        (S: P x N)
    y_t = S_t C_t + D x_t

Which implementation runs (:func:`ssd_backend`):

* **mamba-ssm** (``pip install pararnn[mamba]``, or a wheel built with
  ``MAMBA_SKIP_CUDA_BUILD=TRUE``): its fused Triton SSD kernel
  ``mamba_chunk_scan_combined``, for CUDA tensors. ``import mamba_ssm`` itself imports
  the package's CUDA extension (and the Mamba3 dependencies), which such a build lacks,
  so when the plain import fails :func:`_import_mamba_ssd` loads only the Triton SSD
  module, through an empty ``mamba_ssm`` package object over the installed files that is
  registered for the import only (``sys.modules`` is restored afterwards).
* **torch** (CPU, or mamba-ssm not installed): :func:`ssd_chunked`, the same chunked SSD
  algorithm (quadratic attention-like form inside a chunk, a recurrence across chunks)
  written with einsums in float32. It is slower and uses more memory than the kernel but
  computes the same function; ``tests/lm`` checks it against the step-by-step recurrence,
  and the GPU run compares it with the kernel.

Decoding (``T == 1`` with a cache) always uses the exact one-step recurrence.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

from .lm import CausalConv1d, RMSNorm, StaticCache, state_dtype
from .config import ModelConfig

_MAMBA_SSD = None  # the kernel function once imported, False when unavailable


def _import_mamba_ssd():
    """Return mamba-ssm's ``mamba_chunk_scan_combined`` or ``None`` (see module doc).

    Without side effects: ``sys.modules`` is left as found (a stand-in ``mamba_ssm``
    package, needed while its Triton modules import each other, is taken out again; the
    kernel keeps those modules alive through its globals).
    """
    name = "mamba_ssm.ops.triton.ssd_combined"
    try:
        return importlib.import_module(name).mamba_chunk_scan_combined
    except ImportError:
        pass
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        return None
    before = {key: module for key, module in sys.modules.items() if _is_mamba_module(key)}
    package = types.ModuleType("mamba_ssm")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["mamba_ssm"] = package
    try:
        return importlib.import_module(name).mamba_chunk_scan_combined
    except ImportError:
        return None
    finally:
        for key in [key for key in sys.modules if _is_mamba_module(key)]:
            del sys.modules[key]
        sys.modules.update(before)


def _is_mamba_module(key: str) -> bool:
    return key == "mamba_ssm" or key.startswith("mamba_ssm.")


def ssd_backend(device: torch.device, prefer: str = "auto") -> str:
    """``"mamba_ssm"`` when its kernel can run on ``device`` (and ``prefer`` allows), else ``"torch"``."""
    global _MAMBA_SSD
    if prefer == "torch" or device.type != "cuda":
        return "torch"
    if _MAMBA_SSD is None:
        _MAMBA_SSD = _import_mamba_ssd() or False
    if _MAMBA_SSD is False:
        if prefer == "mamba_ssm":
            raise RuntimeError("mamba-ssm's Triton SSD kernels are not importable; "
                               "install pararnn[mamba] or use the torch fallback")
        return "torch"
    return "mamba_ssm"


def ssd_chunked(x, dt, A, B, C, chunk_size: int, initial_state=None):
    """Chunked SSD in PyTorch. ``x`` ``(b, l, h, p)``, ``dt`` ``(b, l, h)`` (after softplus),
    ``A`` ``(h,)``, ``B``/``C`` ``(b, l, h, n)`` (groups already expanded to heads),
    ``initial_state`` ``(b, h, p, n)`` or None. Returns ``y`` ``(b, l, h, p)`` (without the
    ``D`` skip) and the final state, in float32 (float64 for float64 inputs)."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    pad = (-l) % chunk_size
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, dt, B, C = (t.to(dtype) for t in (x, dt, B, C))
    if pad:  # dt = 0 on padding: no decay and no input, so the final state is unchanged
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    c, L = (l + pad) // chunk_size, chunk_size
    xdt = (x * dt[..., None]).view(b, c, L, h, p)
    B, C = B.view(b, c, L, h, n), C.view(b, c, L, h, n)
    log_decay = (dt * A.to(dtype)).view(b, c, L, h).permute(0, 3, 1, 2)  # (b, h, c, L)
    cum = log_decay.cumsum(dim=-1)

    # 1. inside each chunk: y_t += sum_{s<=t} C_t.B_s exp(cum_t - cum_s) xdt_s
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    seg = (cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf"))
    scores = torch.einsum("bclhn,bcshn->bchls", C, B) * seg.exp().transpose(1, 2)
    y = torch.einsum("bchls,bcshp->bclhp", scores, xdt)

    # 2. each chunk's own contribution to the state at its end
    to_end = (cum[..., -1:] - cum).exp()  # (b, h, c, L)
    chunk_states = torch.einsum("bclhn,bclhp->bchpn", B * to_end.permute(0, 2, 3, 1)[..., None], xdt)

    # 3. carry the state across chunks (a short sequential loop over c chunks)
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state.to(dtype)
    chunk_decay = cum[..., -1].exp()  # (b, h, c)
    starts = []
    for i in range(c):
        starts.append(state)
        state = state * chunk_decay[:, :, i, None, None] + chunk_states[:, i]
    starts = torch.stack(starts, dim=1)  # (b, c, h, p, n): state entering each chunk

    # 4. the entering state's contribution inside each chunk
    C_decayed = C * cum.exp().permute(0, 2, 3, 1)[..., None]
    y = y + torch.einsum("bclhn,bchpn->bclhp", C_decayed, starts)
    return y.reshape(b, c * L, h, p)[:, :l], state


def ssd_sequential(x, dt, A, B, C, initial_state=None):
    """The same recurrence step by step (reference for tests; same shapes as :func:`ssd_chunked`)."""
    b, l, h, p = x.shape
    state = (x.new_zeros(b, h, p, B.shape[-1]) if initial_state is None else initial_state)
    ys = []
    for t in range(l):
        state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    return torch.stack(ys, dim=1), state


def ssd_step(state, x, dt, A, B, C):
    """One step: ``state`` ``(b, h, p, n)``, ``x`` ``(b, h, p)``, ``dt`` ``(b, h)``, ``B``/``C`` ``(b, h, n)``."""
    decay = torch.exp(dt * A)[..., None, None]
    return state * decay + (dt[..., None] * x)[..., None] * B[:, :, None, :]


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d_inner = cfg.mamba_expand * cfg.d_model
        self.d_inner, self.d_state, self.ngroups = d_inner, cfg.mamba_d_state, cfg.mamba_ngroups
        self.headdim = cfg.mamba_headdim
        self.nheads = d_inner // self.headdim
        self.chunk_size = cfg.mamba_chunk
        self.backend = "auto"  # "auto" | "torch" | "mamba_ssm" (see ssd_backend)
        conv_dim = d_inner + 2 * self.ngroups * self.d_state
        self.in_proj = nn.Linear(cfg.d_model, d_inner + conv_dim + self.nheads, bias=False)
        self.conv = CausalConv1d(conv_dim, cfg.mamba_conv)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = RMSNorm(d_inner, cfg.norm_eps)
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)
        self.reset_ssm_parameters()

    def reset_ssm_parameters(self) -> None:
        """Mamba2's init: ``dt`` log-uniform in [1e-3, 1e-1] (stored as softplus^-1),
        ``A`` uniform in [1, 16], ``D = 1``."""
        with torch.no_grad():
            dt = torch.exp(torch.empty_like(self.dt_bias).uniform_(math.log(1e-3), math.log(1e-1)))
            dt = dt.clamp(min=1e-4)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1, 16).log())
            self.D.fill_(1.0)

    def init_projections(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.in_proj.weight, 0.0, std)
        nn.init.normal_(self.out_proj.weight, 0.0, out_std)

    def forward(self, u: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        b, l, _ = u.shape
        gn = self.ngroups * self.d_state
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.d_inner + 2 * gn, self.nheads], -1)
        xBC = self.conv(xBC, cache, silu=True)
        x, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        x = x.view(b, l, self.nheads, self.headdim)
        B = B.view(b, l, self.ngroups, self.d_state)
        C = C.view(b, l, self.ngroups, self.d_state)
        A = -torch.exp(self.A_log.float())
        state = cache.get("ssm") if cache is not None else None

        if isinstance(cache, StaticCache):
            y = self._static_ssd(x, dt, A, B, C, state)
        elif ssd_backend(u.device, self.backend) == "mamba_ssm" and not (l == 1 and state is not None):
            out = _MAMBA_SSD(x, dt, A, B, C, self.chunk_size, D=self.D.float(),
                             dt_bias=self.dt_bias.float(), dt_softplus=True,
                             initial_states=state, return_final_states=cache is not None)
            y, state = out if cache is not None else (out, None)
        else:
            dt = F.softplus(dt.float() + self.dt_bias.float())
            heads_per_group = self.nheads // self.ngroups
            Bh = B.repeat_interleave(heads_per_group, dim=2)
            Ch = C.repeat_interleave(heads_per_group, dim=2)
            if l == 1 and state is not None:
                state = ssd_step(state, x[:, 0].float(), dt[:, 0], A, Bh[:, 0].float(), Ch[:, 0].float())
                y = torch.einsum("bhpn,bhn->bhp", state, Ch[:, 0].float())[:, None]
            else:
                y, state = ssd_chunked(x, dt, A, Bh, Ch, self.chunk_size, state)
            y = y + self.D.float()[:, None] * x.float()
        if cache is not None and not isinstance(cache, StaticCache):
            cache["ssm"] = state.float().detach()
        y = y.reshape(b, l, self.d_inner).to(u.dtype)
        return self.out_proj(self.norm(y * F.silu(z)))

    def static_cache(self, batch: int, max_len: int, device, dtype: torch.dtype) -> StaticCache:
        """Zeroed conv window and SSM state (``max_len`` unused: neither grows)."""
        conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
        return StaticCache(
            conv=torch.zeros(batch, conv_dim, self.conv.kernel_size - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device,
                            dtype=state_dtype(dtype)))

    def load_cache(self, static: StaticCache, dynamic: dict) -> None:
        static["conv"].copy_(dynamic["conv"])
        static["ssm"].copy_(dynamic["ssm"])

    def _static_ssd(self, x, dt, A, B, C, state: torch.Tensor) -> torch.Tensor:
        """One step of the SSM for a single token (``x`` ``(b, 1, h, p)``, ``B``/``C``
        ``(b, 1, g, n)``, ``dt`` before softplus), updating ``state`` in place; returns
        ``y`` ``(b, 1, h, p)`` with the ``D`` skip, in the state's dtype."""
        b = x.shape[0]
        # groups -> heads by expand (a plain view, as repeat_interleave would give)
        shape = (b, self.ngroups, self.nheads // self.ngroups, self.d_state)
        B, C = (t[:, 0, :, None].expand(shape).reshape(b, self.nheads, self.d_state).to(state.dtype)
                for t in (B, C))
        x = x[:, 0].to(state.dtype)
        dt = F.softplus(dt[:, 0].to(state.dtype) + self.dt_bias.to(state.dtype))
        state.copy_(ssd_step(state, x, dt, A.to(state.dtype), B, C))
        y = torch.einsum("bhpn,bhn->bhp", state, C) + self.D.to(state.dtype)[:, None] * x
        return y[:, None]
