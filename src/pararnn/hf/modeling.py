"""``PararnnForCausalLM``: a pararnn language model as a transformers ``PreTrainedModel``.

Generation goes through transformers' ``GenerationMixin`` (greedy, sampling, logits
processors, stopping criteria); the model keeps its own decode state in a
:class:`PararnnCache` instead of transformers' KV-cache classes, as transformers' own
recurrent models (Mamba, RWKV) do: ``_supports_default_dynamic_cache`` is False, the
first forward creates the cache, ``prepare_inputs_for_generation`` feeds only the tokens
the cache has not seen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..models import build_model
from ..models.transformer import Attention, rope_frequencies
from .configuration import PararnnConfig


class PararnnCache:
    """Per-layer decode states of one batch (see :meth:`pararnn.models.LanguageModel.new_caches`)
    and how many tokens of each row they have consumed."""

    is_compileable = False

    def __init__(self, caches: list[dict]) -> None:
        self.caches = caches
        self.seen = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def __len__(self) -> int:
        return len(self.caches)


# the output field (and generation keyword) holding the cache: ``past_key_values`` up to
# transformers 5.2x, ``cache`` since (which renames the old name with a warning)
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _the_cache(cache, past_key_values) -> PararnnCache | None:
    """Our cache from either keyword; anything else (an empty transformers cache some
    versions create up front) counts as none."""
    for candidate in (cache, past_key_values):
        if isinstance(candidate, PararnnCache):
            return candidate
    return None


class PararnnForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = PararnnConfig
    config: PararnnConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True  # no assisted decoding / cache cropping: states cannot be rolled back
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]

    def __init__(self, config: PararnnConfig) -> None:
        super().__init__(config)
        self.model = build_model(config.model_config())
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    def _init_weights(self, module) -> None:
        """Only the RoPE frequencies: the pararnn model initialises its parameters itself and
        checkpoints hold them all, but transformers may build the model on the meta device,
        leaving the non-persistent ``inv_freq`` buffers empty."""
        if isinstance(module, Attention):
            with torch.no_grad():
                module.inv_freq.copy_(rope_frequencies(module.head_dim, module.rope_base))

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        for module in model.modules():  # whichever loading path the installed version took
            model._init_weights(module)
        return model

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value) -> None:
        self.model.embed = value

    def get_output_embeddings(self):
        return None  # the head is the embedding, applied in LanguageModel.forward

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: PararnnCache | None = None, past_key_values: PararnnCache | None = None,
                use_cache: bool | None = None, labels: torch.LongTensor | None = None,
                return_dict: bool | None = None, logits_to_keep: int = 0, **kwargs):
        if input_ids is None:
            raise ValueError("input_ids is required (inputs_embeds are not supported)")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("attention_mask with padding is not supported: a recurrent state "
                             "cannot skip tokens; batch prompts of equal length")
        state = _the_cache(cache, past_key_values)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and state is None:
            state = PararnnCache(self.model.new_caches())
        logits = self.model(input_ids, caches=state.caches if use_cache else None)
        if use_cache:
            state.seen += input_ids.shape[1]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        output = CausalLMOutputWithPast(loss=loss, logits=logits.float(),
                                        **{CACHE_FIELD: state if use_cache else None})
        return output if return_dict is not False else output.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None,
                                      attention_mask=None, use_cache=None, **kwargs):
        state = _the_cache(cache, past_key_values)
        if state is not None and state.seen:
            input_ids = input_ids[:, state.seen:]
            attention_mask = None  # checked whole on the first call
        return {"input_ids": input_ids, CACHE_FIELD: state, "attention_mask": attention_mask,
                "use_cache": use_cache}
