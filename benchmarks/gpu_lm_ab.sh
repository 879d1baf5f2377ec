#!/usr/bin/env bash
# The LM training step of several trees, timed in one call on the GPU machine (A/B of a change).
#
#   benchmarks/gpu_lm_ab.sh OUTDIR VARIANT...
#
# A VARIANT is `-` (this tree as it is) or a patch file, as in gpu_kernel_ab.sh. Each run is
# `gpu_lm_speed.py --seq-lens SEQ_LENS --compile graphs --models MODELS` (defaults: 512,
# paragru) with inductor and Triton caches of its own: torch.compile's on-disk caches are
# shared by default, and trees whose fused ops do not declare their kernels (before
# `fused_op(kernels=...)`) are served each other's compiled graphs (seen on the H200: a
# base tree's LM step ran the new tree's kernels). The variants run in the order given,
# then again in reverse. Logs and JSON: OUTDIR/<index>_<variant>.*; OUTDIR.tgz packs them.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_lm_ab.sh OUTDIR VARIANT...}
shift
[ $# -ge 1 ] || { echo "give at least one VARIANT (- or a patch file)"; exit 2; }
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
        tree=/tmp/lm_ab_$name
        rm -rf "$tree" && mkdir -p "$tree" && cp -r "$root/src" "$root/benchmarks" "$tree/"
        patch -p1 -s -d "$tree" < "$(realpath "$variant")"
    fi
    (cd "$tree" && TORCHINDUCTOR_CACHE_DIR=/tmp/lm_ab_cache/inductor_$name \
        TRITON_CACHE_DIR=/tmp/lm_ab_cache/triton_$name PYTHONPATH=src \
        timeout "${RUN_SECONDS:-150}" python3 benchmarks/gpu_lm_speed.py --out "$out/${index}_$name" \
        --seq-lens "${SEQ_LENS:-512}" --compile graphs --steps 10 --warmup 3 \
        --models "${MODELS:-paragru}") > "$out/${index}_$name.log" 2>&1
    echo "$index $name: exit $? $(grep -h small "$out/${index}_$name.log" | tr -s ' ' | tr '\n' ';')"
    pack
done
