"""``PararnnConfig``: a :class:`pararnn.models.ModelConfig` inside a transformers config."""

from __future__ import annotations

from transformers import PretrainedConfig

from ..models import ModelConfig


class PararnnConfig(PretrainedConfig):
    """``pararnn``: the :class:`~pararnn.models.ModelConfig` fields as a dict (``model``
    is one of paragru, paralstm, transformer, mamba2). ``vocab_size``, ``hidden_size``
    and ``num_hidden_layers`` mirror it for transformers' own utilities."""

    model_type = "pararnn"

    def __init__(self, pararnn: dict | None = None, use_cache: bool = True, **kwargs) -> None:
        model_config = ModelConfig.from_dict(dict(pararnn or {}))  # validates the fields
        self.pararnn = model_config.to_dict()
        self.vocab_size = model_config.vocab_size
        self.hidden_size = model_config.d_model
        self.num_hidden_layers = model_config.n_layers
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", False)  # the head reads the embedding directly
        super().__init__(**kwargs)

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(dict(self.pararnn))
