"""Text corpora: a file, a directory of text files, or a named corpus with no download.

Named corpora come with every Python install:

* ``python:stdlib`` (the default, also ``None``): the source of the running Python's
  standard library (~1,800 ``.py`` files, ~30 MB with its test suite; 10 MB on installs
  without it);
* ``python:packages``: the standard library plus the ``.py`` files of the installed
  packages (site-packages), capped at :data:`PACKAGES_MAX_CHARS`. A large environment
  (PyTorch, Triton, Transformers, ...) gives hundreds of MB of code, enough for 100M-token
  runs without repeating the data. Packages' files are taken in the order of a hash of
  their paths, so the cap keeps a mix of packages rather than the alphabetically first.

Held-out data is split *by file*: a file goes to validation when a hash of its relative
path says so (about 1 file in 20), so the split does not depend on which other files
exist. A single file is split by position: its last 5% (from a line start) is held out.
"""

from __future__ import annotations

import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

VAL_PERCENT = 5
STDLIB, PACKAGES = "python:stdlib", "python:packages"
NAMED_CORPORA = (STDLIB, PACKAGES)
PACKAGES_MAX_CHARS = 400_000_000  # 4x a 100M-byte run; bounds each run's memory and the BPE encoding time


class DataError(ValueError):
    """Unusable data (missing path, no text, too little text): a clear one-line message."""


@dataclass
class Corpus:
    name: str
    train: list[str]  # documents
    val: list[str]
    one_text: bool = False  # train and val are one text cut in two (a single file)

    @property
    def num_chars(self) -> int:
        return sum(len(d) for d in self.train) + sum(len(d) for d in self.val)

    def documents(self) -> list[str]:
        """Every document as read, train and held-out: a text cut in two for the split is
        one document again (scoring its parts apart would put an end-of-text between them)."""
        return [self.train[0] + self.val[0]] if self.one_text else self.train + self.val


def stdlib_files() -> tuple[Path, list[Path]]:
    """The standard library's ``.py`` files (sorted), without installed third-party packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py")
             if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    return root, sorted(files)


def site_package_dirs() -> list[Path]:
    """The running Python's site-packages folders (purelib and platlib, deduplicated)."""
    paths = sysconfig.get_paths()
    dirs = []
    for key in ("purelib", "platlib"):
        path = Path(paths[key])
        if path.is_dir() and path.resolve() not in [d.resolve() for d in dirs]:
            dirs.append(path)
    return dirs


def is_named_corpus(data: str | None) -> bool:
    """Whether ``--data`` names a built-in corpus (or is None, the default) rather than a path."""
    return data is None or data in NAMED_CORPORA


def _read_text(path: Path) -> str | None:
    """The file's text, or ``None`` for binary / non-UTF-8 / unreadable files."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if b"\0" in raw[:8192]:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _held_out(relative: str) -> bool:
    return zlib.crc32(relative.encode()) % 100 < VAL_PERCENT


def _split_files(root: Path, files: list[Path]) -> tuple[list[str], list[str], bool]:
    """Train and held-out documents, and whether they are one file's text cut in two."""
    train, val = [], []
    last_text = None
    for path in files:
        text = _read_text(path)
        if not text:
            continue
        relative = path.relative_to(root).as_posix()
        (val if _held_out(relative) else train).append(text)
        last_text = text
    if len(train) + len(val) == 1:  # one file: its end held out, as for a file given directly
        return *_split_text((train + val)[0]), True
    if not val and len(train) >= 2:  # every file hashed to train: hold out the last one
        val.append(train.pop(train.index(last_text)))
    if not train and len(val) >= 2:  # every file hashed to validation: train on the last one
        train.append(val.pop(val.index(last_text)))
    return train, val, False


def _split_text(text: str) -> tuple[list[str], list[str]]:
    cut = len(text) * (100 - VAL_PERCENT) // 100
    newline = text.find("\n", cut)
    cut = newline + 1 if 0 <= newline < len(text) - 1 else cut
    return [text[:cut]], [text[cut:]]


def _packages_corpus(max_chars: int) -> tuple[str, list[str], list[str]]:
    root, files = stdlib_files()
    train, val, _ = _split_files(root, files)  # held out exactly as in the default corpus
    budget = max_chars - sum(map(len, train)) - sum(map(len, val))
    package_files = [(f"site-packages/{p.relative_to(d).as_posix()}", p)
                     for d in site_package_dirs() for p in d.rglob("*.py")]
    package_files.sort(key=lambda item: (zlib.crc32(item[0].encode()), item[0]))
    count = 0
    for relative, path in package_files:
        if budget <= 0:
            break
        text = _read_text(path)
        if not text:
            continue
        (val if _held_out(relative) else train).append(text)
        budget -= len(text)
        count += 1
    dirs = ", ".join(map(str, site_package_dirs())) or "none"
    return f"{PACKAGES}:{root} + {count} of {len(package_files)} files of {dirs}", train, val


def load_corpus(path: str | Path | None = None, *, max_chars: int = PACKAGES_MAX_CHARS) -> Corpus:
    """Load ``path`` (a text file or a directory, searched recursively, hidden entries
    skipped) or a named corpus (``python:stdlib``, also ``None``; ``python:packages``, at
    most ``max_chars`` characters); split off held-out text."""
    if path is None or str(path) == STDLIB:
        root, files = stdlib_files()
        train, val, one_text = _split_files(root, files)
        name = f"python-stdlib:{root}"
    elif str(path) == PACKAGES:
        (name, train, val), one_text = _packages_corpus(max_chars), False
    else:
        path = Path(path)
        if path.is_file():
            text = _read_text(path)
            if text is None:
                raise DataError(f"--data {path} is not a UTF-8 text file")
            (train, val), one_text = _split_text(text), True
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            train, val, one_text = _split_files(path, files)
        else:
            raise DataError(f"--data {path} does not exist")
        name = str(path)
    if sum(len(t) for t in train) == 0 or sum(len(t) for t in val) == 0:
        raise DataError(f"data {name} holds no usable text (empty, binary, or too small to "
                        "split off held-out text)")
    return Corpus(name, train, val, one_text)
