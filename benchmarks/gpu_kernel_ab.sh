#!/usr/bin/env bash
# The fused kernels of several trees, timed in one call on the GPU machine (A/B of a change).
#
#   benchmarks/gpu_kernel_ab.sh OUTDIR VARIANT...
#
# A VARIANT is `-` (this tree as it is) or a patch file, applied with `patch -p1` to a copy
# of this tree in /tmp, e.g. a commit undone: `git diff C C^ -- src > undo_C.patch` (the
# GPU machine's copy has no usable git history, so patches are made here and carried).
# The variants run in the order given, then again in reverse, so that a drift along the
# call shows as a difference between a variant's two runs. Each run is
# `gpu_profile.py --sweep --bf16 --segments shipped` at SHAPES with TILES (defaults below:
# the LM's solve shapes; the tiles CUDA_TILES picks there and one other per kernel).
# Logs: OUTDIR/<index>_<variant>.log; OUTDIR.tgz packs them after every run.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_kernel_ab.sh OUTDIR VARIANT...}
shift
[ $# -ge 1 ] || { echo "give at least one VARIANT (- or a patch file)"; exit 2; }
shapes=${SHAPES:-32x512x1024,4x4096x1024}
tiles=${TILES:-gru_fwd=64/1/8/4+64/1/4/4,gru_bwd=64/1/8/3+64/1/4/4,lstm_fwd=64/1/8/4+64/1/4/4,lstm_bwd=64/1/4/3+64/2/1/3}
cd "$(dirname "$0")/.."
root=$(pwd)
mkdir -p "$out"
out=$(realpath "$out")
pack() { tar czf "$out.tgz" -C "$(dirname "$out")" "$(basename "$out")"; }
for variant in "$@"; do  # every patch applies before anything runs on the GPU
    if [ "$variant" != "-" ] && ! patch -p1 --dry-run -s -d "$root" < "$variant" > /dev/null; then
        echo "$variant does not apply to this tree"; exit 2
    fi
done
order=("$@")
for ((i = $# - 1; i >= 0; i--)); do order+=("${order[$i]}"); done
index=0
for variant in "${order[@]}"; do
    index=$((index + 1))
    name=$([ "$variant" = "-" ] && echo tree || basename "$variant" .patch)
    tree=$root
    if [ "$variant" != "-" ]; then
        tree=/tmp/kernel_ab_$name
        rm -rf "$tree" && mkdir -p "$tree" && cp -r "$root/src" "$root/benchmarks" "$tree/"
        patch -p1 -s -d "$tree" < "$(realpath "$variant")"
    fi
    (cd "$tree" && PYTHONPATH=src timeout "${RUN_SECONDS:-90}" python3 benchmarks/gpu_profile.py \
        --sweep --bf16 --segments shipped --shapes "$shapes" --tiles "$tiles") \
        > "$out/${index}_$name.log" 2>&1
    echo "$index $name: exit $?"
    pack
done
