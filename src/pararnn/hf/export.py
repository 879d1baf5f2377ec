"""``pararnn export``: a training checkpoint as a Hugging Face model folder.

The folder holds ``config.json`` (:class:`~pararnn.hf.PararnnConfig`),
``model.safetensors`` and a ``PreTrainedTokenizerFast`` (``tokenizer.json`` +
``tokenizer_config.json``) equivalent to the run's tokenizer: the byte tokenizer becomes
a byte-level BPE without merges whose token ``b`` is byte ``b``; a BPE tokenizer is
wrapped as is. ``AutoModelForCausalLM.from_pretrained(folder)`` loads it offline after
``import pararnn.hf``.
"""

from __future__ import annotations

from pathlib import Path

from ..data.tokenizers import EOT, BPETokenizer, ByteTokenizer


def _byte_to_char() -> dict[int, str]:
    """The byte-level alphabet of GPT-2 style BPE: printable bytes stand for themselves,
    the others are moved to code points 256 and up (what ``ByteLevel`` decoding undoes)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def hf_tokenizer(tokenizer):
    """A transformers ``PreTrainedTokenizerFast`` that encodes and decodes as ``tokenizer``
    (a pararnn :class:`ByteTokenizer` or :class:`BPETokenizer`), EOS = its end-of-text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, ByteTokenizer):
        vocab = {char: b for b, char in _byte_to_char().items()}
        vocab[EOT] = tokenizer.eos_id
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([EOT])
        # the byte tokenizer reads "<|endoftext|>" in a text as its 13 bytes (the id comes
        # from the data pipeline only): so must the export, where a special token would match
        split_special = True
    elif isinstance(tokenizer, BPETokenizer):
        tok = Tokenizer.from_str(tokenizer.tok.to_str())
        split_special = False  # the run's BPE matches it as its special token too
    else:
        raise TypeError(f"tokenizer must be a pararnn ByteTokenizer or BPETokenizer, got {type(tokenizer).__name__}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, split_special_tokens=split_special,
                                   model_input_names=["input_ids", "attention_mask"])


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the model of ``checkpoint`` (a run or checkpoint folder) to ``out``."""
    import torch

    from ..train.checkpoint import load_model, open_checkpoint
    from .configuration import PararnnConfig
    from .modeling import PararnnForCausalLM

    ckpt = open_checkpoint(checkpoint)
    model = load_model(ckpt, torch.device("cpu"))  # mlp_hidden resolved, weights checked
    tokenizer = ckpt.tokenizer()
    config = PararnnConfig(pararnn=model.cfg.to_dict(), eos_token_id=tokenizer.eos_id,
                           bos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.eos_id)
    hf_model = PararnnForCausalLM(config)
    hf_model.model.load_state_dict(model.state_dict())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out)
    hf_tokenizer(tokenizer).save_pretrained(out)
    return out
