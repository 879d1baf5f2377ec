"""Model configurations and size presets.

Every model shares one skeleton (see ``lm.py``): token embedding, ``n_layers``
residual blocks of ``[RMSNorm -> mixer ; RMSNorm -> SwiGLU MLP]``, a final RMSNorm and
an output head tied to the embedding. Only the *mixer* differs between models:

* ``paragru`` / ``paralstm``: input projection, ParaGRU/ParaLSTM with a multi-head input
  projection and diagonal recurrence, output projection (``rnn_mixer.py``);
* ``transformer``: causal multi-head attention with RoPE (``transformer.py``);
* ``mamba2``: the Mamba2 SSD mixer (``mamba2.py``).

A *hybrid* ParaRNN model (``attn_every=k``) makes every k-th block a Transformer block, as
Griffin, Jamba and Samba mix a few attention layers among recurrent ones: attention
copies exact strings from far back, which a fixed-size recurrent state cannot.

Mixers have different sizes, so unless ``mlp_hidden`` is given, each block's SwiGLU width
is chosen to give it the parameter count of the Transformer block of the same
``d_model`` (attention ``4 d^2`` + SwiGLU of width ``8/3 d``), so that every model has
the Transformer's parameter count.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

MODELS = ("paragru", "paralstm", "transformer", "mamba2")
RNN_INITS = ("gpt2", "paper")
RNN_OUTPUTS = ("none", "norm", "gate", "gated_norm")

# name -> (d_model, n_layers). Counts below are the blocks' parameters ("non-embedding"),
# which are the same for every model of a preset; tests/lm/test_models.py checks them.
SIZES: dict[str, tuple[int, int]] = {
    "nano": (64, 2),       # ~0.1M: smoke tests
    "tiny": (256, 4),      # ~3.2M: trains on a laptop CPU in minutes
    "small": (512, 8),     # ~25M: the first GPU comparison (RESULTS.md)
    "medium": (768, 12),   # ~85M
    "400m": (1024, 32),    # ~400M  (paper-scale configurations from here on)
    "1b": (2048, 20),      # ~1.0B
    "3b": (2560, 38),      # ~3.0B
    "7b": (4096, 34),      # ~6.9B
}


def _integer(name: str, value, minimum: int, alternative: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}{' ' + alternative if alternative else ''}, "
                         f"got {value!r}")


def _positive_number(name: str, value, alternative: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number"
                         f"{' ' + alternative if alternative else ''}, got {value!r}")


@dataclass
class ModelConfig:
    model: str = "paragru"
    vocab_size: int = 320
    d_model: int = 256
    n_layers: int = 4
    mlp_hidden: int | None = None  # None: matched to the Transformer's parameter count; 0: no MLP
    norm_eps: float = 1e-5
    # output head: tied to the embedding (a language model), or a separate linear layer of
    # `output_size` outputs (None: vocab_size), e.g. the classes of a synthetic task
    tied_head: bool = True
    output_size: int | None = None
    # Transformer
    n_heads: int | None = None  # None: d_model // 64
    rope_base: float = 10000.0
    # ParaGRU / ParaLSTM mixer
    rnn_hidden: int | None = None  # state size n; None: rnn_expand * d_model
    rnn_expand: int | None = None  # n = rnn_expand * d_model (None: 1, or rnn_hidden / d_model)
    rnn_heads: int | None = None  # heads of the block-diagonal input projection; None: d_model // 128
    recurrent_clip: float | None = 0.5
    newton_iters: int = 3
    # True: Linear d -> n, then the cell's projection n -> 3n. False: the cell's projection
    # reads d_model directly (the gated norm then gets its own d -> n gate projection)
    rnn_in_proj: bool = True
    rnn_init: str = "gpt2"  # "gpt2" or "paper" (see ParaRNNMixer.init_projections)
    rnn_forget_bias: float = 0.0  # >= 0: start long-memory (GRU b_z = -this, LSTM b_f = +this)
    # > 0: "chrono" init of the memory gate (replaces rnn_forget_bias): per channel, the
    # initial time constant 1 / (share of new input per step) is uniform in [2, rnn_memory]
    # steps. 0: off.
    rnn_memory: float = 0.0
    # what follows the cell: RMSNorm and/or an output gate silu(W_g x); None: "gated_norm"
    # with gated_norm, else "none"
    rnn_output: str | None = None
    init_std: float = 0.02  # std of the embedding and projections (GPT-2: 0.02; 1/sqrt(d): DCLM)
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
    # hybrid (paragru / paralstm only): every attn_every-th block is a Transformer block
    # (the last of each group of attn_every, Griffin's R, R, A pattern); 0: none
    attn_every: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.n_heads is None:
            self.n_heads = max(1, self.d_model // 64)
        if self.rnn_expand is not None:
            _integer("rnn_expand", self.rnn_expand, 1, "or None")
        if self.rnn_hidden is None:
            self.rnn_hidden = (1 if self.rnn_expand is None else self.rnn_expand) * self.d_model
        elif self.rnn_expand is not None and self.rnn_hidden != self.rnn_expand * self.d_model:
            raise ValueError(f"rnn_hidden={self.rnn_hidden} contradicts rnn_expand={self.rnn_expand} "
                             f"(n = rnn_expand * d_model = {self.rnn_expand * self.d_model}); give one")
        if self.rnn_heads is None:
            self.rnn_heads = max(1, self.d_model // 128)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "rnn_hidden", "rnn_heads",
                     "newton_iters", "mamba_expand", "mamba_d_state", "mamba_headdim",
                     "mamba_ngroups", "mamba_conv", "mamba_chunk"):
            _integer(name, getattr(self, name), 1)
        _integer("conv_kernel", self.conv_kernel, 0)
        if self.mlp_hidden is not None:
            _integer("mlp_hidden", self.mlp_hidden, 0, "or None")
        for name in ("norm_eps", "rope_base", "init_std"):
            _positive_number(name, getattr(self, name))
        if self.recurrent_clip is not None:
            _positive_number("recurrent_clip", self.recurrent_clip, "or None")
        if isinstance(self.rnn_forget_bias, bool) or not isinstance(self.rnn_forget_bias, (int, float)) \
                or not 0 <= self.rnn_forget_bias < math.inf:
            raise ValueError(f"rnn_forget_bias must be a number >= 0, got {self.rnn_forget_bias!r}")
        for name in ("tied_head", "rnn_in_proj", "gated_norm", "residual_scale"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.output_size is None:
            self.output_size = self.vocab_size
        _integer("output_size", self.output_size, 1)
        if self.tied_head and self.output_size != self.vocab_size:
            raise ValueError(f"a tied head has vocab_size={self.vocab_size} outputs; "
                             f"output_size={self.output_size} needs tied_head=False")
        if isinstance(self.rnn_memory, bool) or not isinstance(self.rnn_memory, (int, float)) or not (
                self.rnn_memory == 0 or 2 < self.rnn_memory < math.inf):
            raise ValueError(f"rnn_memory must be 0 (off) or a number of steps > 2, got {self.rnn_memory!r}")
        if self.rnn_init not in RNN_INITS:
            raise ValueError(f"rnn_init must be one of {', '.join(RNN_INITS)}, got {self.rnn_init!r}")
        if self.rnn_output is not None and self.rnn_output not in RNN_OUTPUTS:
            raise ValueError(f"rnn_output must be one of {', '.join(RNN_OUTPUTS)} or None, "
                             f"got {self.rnn_output!r}")
        if isinstance(self.attn_every, bool) or not isinstance(self.attn_every, int) or self.attn_every < 0:
            raise ValueError(f"attn_every must be 0 (no attention blocks) or a positive integer, "
                             f"got {self.attn_every!r}")
        if self.attn_every and not self.is_rnn:
            raise ValueError(f"attn_every mixes attention blocks into a paragru or paralstm model; "
                             f"the {self.model} model takes attn_every=0 only")
        if self.attn_every == 1:
            raise ValueError("attn_every=1 makes every block an attention block: train "
                             "--model transformer for that")
        if self.attn_every > self.n_layers:
            raise ValueError(f"attn_every={self.attn_every} exceeds n_layers={self.n_layers}: "
                             "no block would be an attention block")
        # the checks of each mixer the model has
        kinds = set(self.block_models)
        if "transformer" in kinds and (self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2):
            raise ValueError(f"d_model={self.d_model} must split into n_heads={self.n_heads} "
                             "heads of even size")
        if self.is_rnn and (self.rnn_hidden % self.rnn_heads or self.d_model % self.rnn_heads):
            raise ValueError(f"rnn_heads={self.rnn_heads} must divide d_model={self.d_model} "
                             f"and rnn_hidden={self.rnn_hidden}")
        if "mamba2" in kinds:
            inner = self.mamba_expand * self.d_model
            if inner % self.mamba_headdim:
                raise ValueError("mamba_expand * d_model must be a multiple of mamba_headdim")
            if (inner // self.mamba_headdim) % self.mamba_ngroups:
                raise ValueError(f"mamba_ngroups={self.mamba_ngroups} must divide the "
                                 f"{inner // self.mamba_headdim} heads of mamba_headdim="
                                 f"{self.mamba_headdim}")

    @property
    def is_rnn(self) -> bool:
        return self.model in ("paragru", "paralstm")

    @property
    def block_models(self) -> list[str]:
        """The mixer of each block, as a model name: ``model``, except blocks
        ``k-1, 2k-1, ...`` of a hybrid (``attn_every=k``), which are ``"transformer"``."""
        k = self.attn_every
        return ["transformer" if k and (i + 1) % k == 0 else self.model for i in range(self.n_layers)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


# set by the run itself (--model, the tokenizer's vocabulary), never by a model option
RUN_FIELDS = ("model", "vocab_size")


# options that shape one kind of mixer: given for another model they would change nothing
_OPTIONS_OF = {"rnn_": ("paragru", "paralstm"), "attn_every": ("paragru", "paralstm"),
               "mamba_": ("mamba2",)}


def check_model_options(options: dict, model: str | None = None) -> None:
    """Raise unless ``options`` is a dict of :class:`ModelConfig` overrides (with ``model``:
    none of them for another model's mixer only, e.g. ``rnn_expand`` of a Transformer)."""
    if not isinstance(options, dict):
        raise TypeError(f"model options must be a dict, got {type(options).__name__}")
    allowed = {f.name for f in dataclasses.fields(ModelConfig)} - set(RUN_FIELDS)
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown model option(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(sorted(allowed))}")
    if model is None:
        return
    for key in sorted(options):
        owners = next((models for prefix, models in _OPTIONS_OF.items() if key.startswith(prefix)), None)
        if owners is not None and model not in owners:
            raise ValueError(f"model option {key} applies to {' and '.join(owners)} only, not to "
                             f"{model} (it would change nothing)")


_WORDS = {"true": True, "false": False, "null": None, "none": None}


def parse_model_options(text: str, model: str | None = None) -> dict:
    """``"key=value,key=value"`` -> ``{key: value}``; a value is read as JSON (``2``,
    ``1e-3``) when it parses, ``true``/``false``/``null``/``none`` in any case as the
    boolean or None, else kept as a string (``paper``). A key given twice is an error;
    the options are checked by :func:`check_model_options` (for ``model`` when given)."""
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"model option {item!r} must look like key=value")
        if key in options:
            raise ValueError(f"model option {key!r} is given twice")
        if value.lower() in _WORDS:
            options[key] = _WORDS[value.lower()]
            continue
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    check_model_options(options, model)
    return options


def transformer_block_params(d_model: int) -> int:
    """Parameters of one Transformer block (without norms): attention + SwiGLU(8/3 d)."""
    return 4 * d_model * d_model + 3 * d_model * round_up(8 * d_model // 3, 64)


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


BLOCKS = ("standard", "paper", "tuned", "hybrid", "auto")
# the hybrid block's spacing of attention blocks (RESULTS.md section 1: one in 8 beat one in
# 4 by 0.3% at 20M tokens and keeps 7 of 8 blocks recurrent, so decoding stays mostly O(1))
HYBRID_ATTN_EVERY = 8


def preset(model: str, size: str | None = None, *, vocab_size: int = 320, block: str = "standard",
           **overrides) -> ModelConfig:
    """The configuration of ``model`` at ``size`` (a key of :data:`SIZES`).

    ``size=None`` takes ``d_model`` and ``n_layers`` from ``overrides`` (both required),
    e.g. ``preset("paragru", d_model=64, n_layers=1, mlp_hidden=0)`` for a one-layer model.

    Blocks (:data:`BLOCKS`):

    * ``"standard"``: the shared skeleton with the plain mixer;
    * ``"paper"``: the ParaRNN paper's block options (causal conv of width 4, gated RMSNorm,
      scaled residuals); they apply to the ParaRNN mixers only, except the residual scale,
      which every model then gets;
    * ``"tuned"``: ``"paper"`` plus, for ParaGRU/ParaLSTM, the two changes that won the
      measured ablation in RESULTS.md: a state twice as wide as the model
      (``rnn_expand=2``; the SwiGLU narrows to keep the parameter count) and the chrono
      memory-gate init (``rnn_memory=64``). Overrides of those fields win;
    * ``"hybrid"``: ``"tuned"`` plus, for ParaGRU/ParaLSTM of at least
      :data:`HYBRID_ATTN_EVERY` layers, one attention block in every
      :data:`HYBRID_ATTN_EVERY` (``attn_every``; the last of each group). This won the
      100M-token comparison of RESULTS.md against the Transformer and Mamba2, where the
      purely recurrent ``"tuned"`` model trailed. Smaller models stay purely recurrent; an
      ``attn_every`` override wins (``attn_every=0``: no attention);
    * ``"auto"``: ``"hybrid"`` for ParaGRU/ParaLSTM, ``"standard"`` for the baselines (what
      ``pararnn train`` uses by default).
    """
    if size is None:
        missing = [name for name in ("d_model", "n_layers") if name not in overrides]
        if missing:
            raise ValueError(f"preset without a size needs {' and '.join(missing)}")
        d_model, n_layers = overrides.pop("d_model"), overrides.pop("n_layers")
    elif size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    else:
        d_model, n_layers = SIZES[size]
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; choose one of {', '.join(BLOCKS)}")
    rnn = model in ("paragru", "paralstm")
    if block == "auto":
        block = "hybrid" if rnn else "standard"
    fields = dict(model=model, vocab_size=vocab_size, d_model=d_model, n_layers=n_layers)
    if block in ("paper", "tuned", "hybrid"):
        fields.update(residual_scale=True)
        if rnn:
            fields.update(conv_kernel=4, gated_norm=True)
    if block in ("tuned", "hybrid") and rnn:
        if "rnn_hidden" not in overrides and "rnn_expand" not in overrides:
            fields.update(rnn_expand=2)
        if "rnn_memory" not in overrides and "rnn_forget_bias" not in overrides:
            fields.update(rnn_memory=64.0)
    if block == "hybrid" and rnn and overrides.get("n_layers", n_layers) >= HYBRID_ATTN_EVERY:
        fields.update(attn_every=HYBRID_ATTN_EVERY)
    fields.update(overrides)
    return ModelConfig(**fields)
