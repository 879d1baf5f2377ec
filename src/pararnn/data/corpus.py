"""Text corpora: a file, a directory of text files, or the default corpus with no download.

The default corpus is the source of the running Python's standard library (every Python
install ships it; ~1,800 ``.py`` files, ~30 MB). Held-out data is split *by file*: a file
goes to validation when a hash of its relative path says so (about 1 file in 20), so the
split does not depend on which other files exist. A single file is split by position:
its last 5% (from a line start) is held out.
"""

from __future__ import annotations

import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

VAL_PERCENT = 5


class DataError(ValueError):
    """Unusable data (missing path, no text, too little text): a clear one-line message."""


@dataclass
class Corpus:
    name: str
    train: list[str]  # documents
    val: list[str]

    @property
    def num_chars(self) -> int:
        return sum(len(d) for d in self.train) + sum(len(d) for d in self.val)


def stdlib_files() -> tuple[Path, list[Path]]:
    """The standard library's ``.py`` files (sorted), without installed third-party packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py")
             if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    return root, sorted(files)


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


def _split_files(root: Path, files: list[Path]) -> tuple[list[str], list[str]]:
    train, val = [], []
    last_text = None
    for path in files:
        text = _read_text(path)
        if not text:
            continue
        relative = path.relative_to(root).as_posix()
        (val if _held_out(relative) else train).append(text)
        last_text = text
    if not val and len(train) >= 2:  # every file hashed to train: hold out the last one
        val.append(train.pop(train.index(last_text)))
    return train, val


def _split_text(text: str) -> tuple[list[str], list[str]]:
    cut = len(text) * (100 - VAL_PERCENT) // 100
    newline = text.find("\n", cut)
    cut = newline + 1 if 0 <= newline < len(text) - 1 else cut
    return [text[:cut]], [text[cut:]]


def load_corpus(path: str | Path | None = None) -> Corpus:
    """Load ``path`` (a text file or a directory, searched recursively, hidden entries
    skipped) or, with ``None``, the standard-library corpus; split off held-out text."""
    if path is None:
        root, files = stdlib_files()
        train, val = _split_files(root, files)
        name = f"python-stdlib:{root}"
    else:
        path = Path(path)
        if path.is_file():
            text = _read_text(path)
            if text is None:
                raise DataError(f"--data {path} is not a UTF-8 text file")
            train, val = _split_text(text)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            train, val = _split_files(path, files)
        else:
            raise DataError(f"--data {path} does not exist")
        name = str(path)
    if sum(len(t) for t in train) == 0 or sum(len(t) for t in val) == 0:
        raise DataError(f"data {name} holds no usable text (empty, binary, or too small to "
                        "split off held-out text)")
    return Corpus(name, train, val)
