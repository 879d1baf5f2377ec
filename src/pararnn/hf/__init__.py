"""Hugging Face ``transformers`` integration (``pip install pararnn[hf]``).

    import pararnn.hf  # registers "pararnn" with AutoConfig / AutoModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("exported/")   # from `pararnn export`
    tokenizer = AutoTokenizer.from_pretrained("exported/")
    out = model.generate(**tokenizer("def ", return_tensors="pt"), max_new_tokens=50)

:class:`PararnnForCausalLM` wraps any of the four models (ParaGRU, ParaLSTM, Transformer,
Mamba2); its cache object (:class:`PararnnCache`) holds the per-layer decode states:
an O(1) recurrent / SSM state, or the Transformer's KV cache. Works with transformers
4.57, 5.0 and 5.24 (the cache travels as ``past_key_values`` or ``cache``, whichever the
installed ``GenerationMixin`` uses).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration import PararnnConfig
from .modeling import PararnnCache, PararnnForCausalLM
from .export import export_checkpoint, hf_tokenizer

AutoConfig.register(PararnnConfig.model_type, PararnnConfig, exist_ok=True)
AutoModelForCausalLM.register(PararnnConfig, PararnnForCausalLM, exist_ok=True)

__all__ = ["PararnnCache", "PararnnConfig", "PararnnForCausalLM", "export_checkpoint", "hf_tokenizer"]
