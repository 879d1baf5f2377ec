"""The encoded corpus, kept on disk for the next run with the same data and tokenizer.

Encoding a few hundred MB of code with a BPE takes minutes of CPU; a sweep's runs (and a
run resumed after an interruption) would each pay it again. The cache key is a hash of
the tokenizer and of every document's text, so a changed file, split or tokenizer never
reuses stale tokens. Arrays are written atomically (temporary name, then rename) and
read memory-mapped, so concurrent runs share one copy in the page cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .corpus import Corpus


def corpus_key(tokenizer, corpus: Corpus) -> str:
    digest = hashlib.sha256(tokenizer.spec().encode())
    for split in (corpus.train, corpus.val):
        digest.update(f"split of {len(split)} documents".encode())
        for doc in split:
            digest.update(len(doc).to_bytes(8, "little"))
            digest.update(doc.encode("utf-8", errors="surrogatepass"))
    return digest.hexdigest()[:20]


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def encode_corpus(tokenizer, corpus: Corpus, cache: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out token streams of ``corpus``; with a ``cache`` folder, read
    them from there when an earlier call encoded the same documents with the same
    tokenizer, else encode and store them there."""
    if cache is None:
        return tokenizer.encode_documents(corpus.train), tokenizer.encode_documents(corpus.val)
    cache = Path(cache)
    key = corpus_key(tokenizer, corpus)
    paths = [cache / f"{key}-{split}.npy" for split in ("train", "val")]
    if all(p.is_file() for p in paths):
        return tuple(np.load(p, mmap_mode="r") for p in paths)
    cache.mkdir(parents=True, exist_ok=True)
    arrays = tokenizer.encode_documents(corpus.train), tokenizer.encode_documents(corpus.val)
    for path, array in zip(paths, arrays):
        _save_atomic(path, array)
    return arrays
