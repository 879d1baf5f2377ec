"""A small real corpus for training tests: the first files of the running Python's
standard library source, each cut short, flattened into one folder."""

from pathlib import Path

from pararnn.data.corpus import stdlib_files


def write_source_corpus(root: Path, files: int = 50, chars: int = 2000) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    stdlib_root, paths = stdlib_files()
    for path in paths[:files]:
        name = path.relative_to(stdlib_root).as_posix().replace("/", "__")
        (root / name).write_text(path.read_text(encoding="utf-8", errors="replace")[:chars])
    return root
