"""Corpora, tokenizers and deterministic batches for language-model training."""

from .batches import eval_batches, eval_starts, train_batch
from .corpus import Corpus, DataError, load_corpus
from .tokenizers import TOKENIZERS, BPETokenizer, ByteTokenizer, load_tokenizer

__all__ = ["BPETokenizer", "ByteTokenizer", "Corpus", "DataError", "TOKENIZERS", "eval_batches",
           "eval_starts", "load_corpus", "load_tokenizer", "train_batch"]
