"""Language models: ParaGRU/ParaLSTM LMs and Transformer/Mamba2 baselines in one skeleton.

>>> from pararnn.models import build_model, preset
>>> model = build_model(preset("paragru", "tiny"))
"""

from __future__ import annotations

from .lm import LanguageModel, sample
from .config import MODELS, SIZES, ModelConfig, preset


def mixer_factory(model: str):
    """The class of the sequence mixer of ``model`` (one of :data:`MODELS`)."""
    if model in ("paragru", "paralstm"):
        from .rnn_mixer import ParaRNNMixer
        return ParaRNNMixer
    if model == "transformer":
        from .transformer import Attention
        return Attention
    if model == "mamba2":
        from .mamba2 import Mamba2Mixer
        return Mamba2Mixer
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


def build_model(cfg: ModelConfig) -> LanguageModel:
    return LanguageModel(cfg, mixer_factory)


def num_params(cfg: ModelConfig) -> int:
    """The parameter count of ``build_model(cfg)``, built on the meta device (no memory)."""
    import torch
    with torch.device("meta"):
        return build_model(cfg).num_params()


__all__ = ["MODELS", "SIZES", "LanguageModel", "ModelConfig", "build_model", "mixer_factory",
           "num_params", "preset", "sample"]
