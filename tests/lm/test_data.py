"""Corpora, tokenizers and deterministic batches."""

import numpy as np
import pytest
import torch

from pararnn.data import (BPETokenizer, ByteTokenizer, DataError, eval_starts, load_corpus,
                          load_tokenizer, train_batch)
from pararnn.data.corpus import _held_out


def make_dir(tmp_path, n=40):
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        (root / ("sub" if i % 2 else ".") / f"doc{i}.txt").write_text(f"document {i}: " + "héllo " * (i + 3))
    (root / "binary.bin").write_bytes(b"\x00\x01\x02" * 10)
    (root / ".hidden.txt").write_text("hidden text")
    return root


def test_directory_split_by_file(tmp_path):
    root = make_dir(tmp_path)
    corpus = load_corpus(root)
    assert len(corpus.train) + len(corpus.val) == 40  # the binary and hidden files are skipped
    assert corpus.val and corpus.train
    assert not set(corpus.train) & set(corpus.val)
    expected_val = {(root / p).read_text() for p in
                    [f"{'sub/' if i % 2 else ''}doc{i}.txt" for i in range(40)]
                    if _held_out(p)}
    assert expected_val <= set(corpus.val)
    assert corpus.documents() == corpus.train + corpus.val  # one document per file


def test_single_file_holds_out_its_tail(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("".join(f"line {i}\n" for i in range(1000)))
    corpus = load_corpus(f)
    assert corpus.train[0] + corpus.val[0] == f.read_text()
    assert corpus.val[0].startswith("line ") and 0.03 < len(corpus.val[0]) / len(f.read_text()) < 0.07
    assert corpus.documents() == [f.read_text()]  # all of it, one document again


@pytest.mark.parametrize("name", ["a.txt", next(n for n in (f"doc{i}.txt" for i in range(1000))
                                               if _held_out(n))])
def test_folder_of_one_file_holds_out_its_tail(tmp_path, name):
    """A folder holding one file splits it as the file given directly (it was refused as
    holding no usable text: the file went wholly to training or, the second name, wholly to
    validation, by its name's hash)."""
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / name).write_text("".join(f"line {i}\n" for i in range(1000)))
    corpus, direct = load_corpus(folder), load_corpus(folder / name)
    assert (corpus.train, corpus.val) == (direct.train, direct.val)
    assert corpus.documents() == direct.documents() == [(folder / name).read_text()]


def test_folder_whose_files_all_hash_to_validation_still_trains(tmp_path):
    names = [n for n in (f"doc{i}.txt" for i in range(200)) if _held_out(n)][:2]
    folder = tmp_path / "val_only"
    folder.mkdir()
    for n in names:
        (folder / n).write_text(f"text of {n}\n" * 50)
    corpus = load_corpus(folder)
    assert len(corpus.train) == len(corpus.val) == 1


def test_default_corpus_is_the_standard_library():
    corpus = load_corpus(None)
    assert "python-stdlib" in corpus.name
    assert len(corpus.train) > 500 and len(corpus.val) > 20
    assert corpus.num_chars > 5_000_000


def test_packages_corpus_adds_site_packages_to_the_standard_library():
    """python:packages = the default corpus (split the same way) + package files up to the
    cap; the named corpora are not paths."""
    from pararnn.data.corpus import is_named_corpus
    stdlib = load_corpus("python:stdlib")
    assert stdlib.train == load_corpus(None).train
    cap = stdlib.num_chars + 2_000_000
    corpus = load_corpus("python:packages", max_chars=cap)
    assert corpus.name.startswith("python:packages:") and "site-packages" in corpus.name
    assert corpus.train[:len(stdlib.train)] == stdlib.train and corpus.val[:len(stdlib.val)] == stdlib.val
    assert cap <= corpus.num_chars < cap + 5_000_000  # stops at the first file past the cap
    assert len(corpus.train) > len(stdlib.train) and len(corpus.val) >= len(stdlib.val)
    assert is_named_corpus(None) and is_named_corpus("python:packages") and not is_named_corpus("texts")


def test_token_cache_reuses_only_the_same_text_and_tokenizer(tmp_path):
    from pararnn.data import Corpus
    from pararnn.data.cache import encode_corpus
    corpus = Corpus("c", ["def f():\n    return 1\n", "x = 2\n"], ["y = 3\n"])
    tokenizer = ByteTokenizer()
    fresh = encode_corpus(tokenizer, corpus)
    first = encode_corpus(tokenizer, corpus, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    again = encode_corpus(tokenizer, corpus, tmp_path)
    assert isinstance(again[0], np.memmap)  # read back, not encoded again
    for a, b, c in zip(fresh, first, again):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    changed = Corpus("c", ["def f():\n    return 2\n", "x = 2\n"], ["y = 3\n"])
    assert not np.array_equal(encode_corpus(tokenizer, changed, tmp_path)[0], fresh[0])
    bpe = BPETokenizer.train(corpus.train * 20, 300)
    assert np.array_equal(encode_corpus(bpe, corpus, tmp_path)[0], bpe.encode_documents(corpus.train))
    assert len(list(tmp_path.glob("*.npy"))) == 6  # one pair per (text, tokenizer)


@pytest.mark.parametrize("make", ["missing", "empty_dir", "binary", "empty_file"])
def test_bad_data(tmp_path, make):
    path = tmp_path / "x"
    if make == "empty_dir":
        path.mkdir()
    elif make == "binary":
        path.write_bytes(b"\x00\xff" * 100)
    elif make == "empty_file":
        path.write_text("")
    with pytest.raises(DataError):
        load_corpus(path)


def test_byte_tokenizer(tmp_path):
    tok = ByteTokenizer()
    text = "héllo, wörld ✓"
    assert tok.decode(tok.encode(text)) == text
    stream = tok.encode_documents(["ab", "c"])
    assert stream.tolist() == [97, 98, 256, 99, 256]
    assert tok.token_bytes()[stream].sum() == 3
    tok.save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)


def test_bpe_tokenizer_trains_offline(tmp_path):
    docs = [f"def function_{i}(x):\n    return x * {i} + 'é'\n" for i in range(300)]
    tok = BPETokenizer.train(docs, vocab_size=400)
    assert tok.vocab_size <= 400
    assert tok.decode(tok.encode(docs[5])) == docs[5]
    stream = tok.encode_documents(docs[:3])
    assert (stream == tok.eos_id).sum() == 3
    assert len(stream) < sum(len(d) for d in docs[:3])  # it compresses
    # bytes per token add up to the UTF-8 length of the text
    assert tok.token_bytes()[stream].sum() == sum(len(d.encode()) for d in docs[:3])
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode(docs[7]) == tok.encode(docs[7])


def test_batches_are_deterministic_and_sharded():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = train_batch(tokens, 5, seed=1, batch_size=4, seq_len=16)
    x2, _ = train_batch(tokens, 5, seed=1, batch_size=4, seq_len=16)
    assert torch.equal(x, x2) and x.shape == (4, 16)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert not torch.equal(x, train_batch(tokens, 6, seed=1, batch_size=4, seq_len=16)[0])
    # two ranks of batch 2 see exactly the rows of one process with batch 4
    r0, _ = train_batch(tokens, 5, seed=1, batch_size=2, seq_len=16, rank=0, world=2)
    r1, _ = train_batch(tokens, 5, seed=1, batch_size=2, seq_len=16, rank=1, world=2)
    assert torch.equal(torch.cat([r0, r1]), x)


def test_eval_windows():
    starts = eval_starts(1000, 100, None)
    assert starts.tolist() == list(range(0, 900, 100))
    assert len(eval_starts(100_000, 10, 7)) == 7
