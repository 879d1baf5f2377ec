"""Tokenizers: byte-level (default, nothing to train) and BPE trained offline on the corpus.

Both turn a list of documents into one token stream with an end-of-text token after each
document, and know how many UTF-8 bytes each token stands for (for bits per byte).
A tokenizer is saved into the run directory and every checkpoint as ``tokenizer.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

EOT = "<|endoftext|>"


class ByteTokenizer:
    """Token ``b`` is byte ``b`` (0..255); 256 is end-of-text."""

    kind = "byte"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def encode_documents(self, docs: list[str]) -> np.ndarray:
        parts = []
        for doc in docs:
            parts.append(np.frombuffer(doc.encode("utf-8"), dtype=np.uint8).astype(np.uint16))
            parts.append(np.array([self.eos_id], dtype=np.uint16))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)

    def token_bytes(self) -> np.ndarray:
        counts = np.ones(self.vocab_size, dtype=np.int64)
        counts[self.eos_id] = 0
        return counts

    def spec(self) -> str:
        """The tokenizer as the JSON text of its ``tokenizer.json``."""
        return json.dumps({"kind": self.kind})

    def save(self, directory: Path) -> None:
        (Path(directory) / "tokenizer.json").write_text(self.spec())


class BPETokenizer:
    """Byte-level BPE from the ``tokenizers`` package (GPT-2 style pre-tokenization)."""

    kind = "bpe"

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.eos_id = tokenizer.token_to_id(EOT)

    @classmethod
    def train(cls, docs: list[str], vocab_size: int, max_chars: int = 20_000_000) -> "BPETokenizer":
        """Train on the first ``max_chars`` characters of ``docs`` (offline, a few seconds)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        budget, sample = max_chars, []
        for doc in docs:
            if budget <= 0:
                break
            sample.append(doc[:budget])
            budget -= len(sample[-1])
        tok.train_from_iterator(sample, trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))

    def encode_documents(self, docs: list[str]) -> np.ndarray:
        dtype = np.uint16 if self.vocab_size <= 65536 else np.uint32
        parts = []
        for enc in self.tok.encode_batch(docs):
            parts.append(np.asarray(enc.ids, dtype=dtype))
            parts.append(np.array([self.eos_id], dtype=dtype))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def token_bytes(self) -> np.ndarray:
        # byte-level BPE spells every byte as one character, so a token's length in
        # characters is its length in bytes; the end-of-text token stands for none
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for token, idx in self.tok.get_vocab().items():
            counts[idx] = 0 if idx == self.eos_id else len(token)
        return counts

    def spec(self) -> str:
        """The tokenizer as the JSON text of its ``tokenizer.json``."""
        return json.dumps({"kind": self.kind, "bpe": json.loads(self.tok.to_str())})

    def save(self, directory: Path) -> None:
        (Path(directory) / "tokenizer.json").write_text(self.spec())


TOKENIZERS = ("byte", "bpe")


def load_tokenizer(directory: str | Path):
    """The tokenizer saved in ``directory/tokenizer.json``."""
    spec = json.loads((Path(directory) / "tokenizer.json").read_text())
    if spec.get("kind") == "byte":
        return ByteTokenizer()
    if spec.get("kind") == "bpe":
        from tokenizers import Tokenizer
        return BPETokenizer(Tokenizer.from_str(json.dumps(spec["bpe"])))
    raise ValueError(f"unknown tokenizer kind {spec.get('kind')!r}")
