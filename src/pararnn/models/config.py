"""Model configurations and size presets.

Every model shares one skeleton (see ``blocks.py``): token embedding, ``n_layers``
residual blocks of ``[RMSNorm -> mixer ; RMSNorm -> SwiGLU MLP]``, a final RMSNorm and
an output head tied to the embedding. Only the *mixer* differs between models:

* ``paragru`` / ``paralstm``: input projection, ParaGRU/ParaLSTM with a multi-head input
  projection and diagonal recurrence, output projection (``paralm.py``);
* ``transformer``: causal multi-head attention with RoPE (``transformer.py``);
* ``mamba2``: the Mamba2 SSD mixer (``mamba2.py``).

Mixers have different sizes, so unless ``mlp_hidden`` is given, each model's SwiGLU width
is chosen to give every model the parameter count of the Transformer of the same
``d_model`` and ``n_layers`` (attention ``4 d^2`` + SwiGLU of width ``8/3 d``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MODELS = ("paragru", "paralstm", "transformer", "mamba2")

# name -> (d_model, n_layers). Counts below are the blocks' parameters ("non-embedding"),
# which are the same for every model of a preset; tests/lm/test_models.py checks them.
SIZES: dict[str, tuple[int, int]] = {
    "nano": (64, 2),       # ~0.1M: smoke tests
    "tiny": (256, 4),      # ~3.1M: trains on a laptop CPU in minutes
    "small": (512, 8),     # ~25M: the first GPU comparison (RESULTS.md)
    "medium": (768, 12),   # ~85M
    "400m": (1024, 32),    # ~400M  (paper-scale configurations from here on)
    "1b": (2048, 20),      # ~1.0B
    "3b": (2560, 38),      # ~3.0B
    "7b": (4096, 34),      # ~6.8B
}


@dataclass
class ModelConfig:
    model: str = "paragru"
    vocab_size: int = 320
    d_model: int = 256
    n_layers: int = 4
    mlp_hidden: int | None = None  # None: matched to the Transformer's parameter count
    norm_eps: float = 1e-5
    # Transformer
    n_heads: int | None = None  # None: d_model // 64
    rope_base: float = 10000.0
    # ParaGRU / ParaLSTM mixer
    rnn_hidden: int | None = None  # None: d_model
    rnn_heads: int | None = None  # heads of the block-diagonal input projection; None: d_model // 128
    recurrent_clip: float | None = 0.5
    newton_iters: int = 3
    # the paper's block (docs/DESIGN.md, "The language-model block"): off by default
    conv_kernel: int = 0  # short causal depthwise conv before the cell (0: none)
    gated_norm: bool = False  # gated RMSNorm after the cell
    residual_scale: bool = False  # learnable per-channel scale on both residual branches
    # Mamba2 mixer
    mamba_expand: int = 2
    mamba_d_state: int = 64
    mamba_headdim: int = 64
    mamba_ngroups: int = 1
    mamba_conv: int = 4
    mamba_chunk: int = 64

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.n_heads is None:
            self.n_heads = max(1, self.d_model // 64)
        if self.rnn_hidden is None:
            self.rnn_hidden = self.d_model
        if self.rnn_heads is None:
            self.rnn_heads = max(1, self.d_model // 128)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "rnn_hidden", "rnn_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model={self.d_model} must split into n_heads={self.n_heads} "
                             "heads of even size")
        if self.rnn_hidden % self.rnn_heads or self.d_model % self.rnn_heads:
            raise ValueError(f"rnn_heads={self.rnn_heads} must divide d_model={self.d_model} "
                             f"and rnn_hidden={self.rnn_hidden}")
        if (self.mamba_expand * self.d_model) % self.mamba_headdim:
            raise ValueError("mamba_expand * d_model must be a multiple of mamba_headdim")
        if self.conv_kernel < 0:
            raise ValueError(f"conv_kernel must be >= 0, got {self.conv_kernel}")

    @property
    def is_rnn(self) -> bool:
        return self.model in ("paragru", "paralstm")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


def reference_layer_params(d_model: int) -> int:
    """Parameters of one Transformer block (without norms): attention + SwiGLU(8/3 d)."""
    return 4 * d_model * d_model + 3 * d_model * round_up(8 * d_model // 3, 64)


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def preset(model: str, size: str, *, vocab_size: int = 320, block: str = "standard",
           **overrides) -> ModelConfig:
    """The configuration of ``model`` at ``size`` (a key of :data:`SIZES`).

    ``block="paper"`` turns on the ParaRNN paper's block options (causal conv of width 4,
    gated RMSNorm, scaled residuals); they apply to the ParaRNN mixers only, except the
    residual scale, which every model then gets.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if block not in ("standard", "paper"):
        raise ValueError(f"unknown block {block!r}; choose 'standard' or 'paper'")
    d_model, n_layers = SIZES[size]
    fields = dict(model=model, vocab_size=vocab_size, d_model=d_model, n_layers=n_layers)
    if block == "paper":
        fields.update(residual_scale=True)
        if model in ("paragru", "paralstm"):
            fields.update(conv_kernel=4, gated_norm=True)
    fields.update(overrides)
    return ModelConfig(**fields)
