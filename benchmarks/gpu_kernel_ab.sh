#!/usr/bin/env bash
# The fused kernels of several trees, timed in one call on the GPU machine (A/B of a change).
#
#   benchmarks/gpu_kernel_ab.sh OUTDIR VARIANT...
#
# VARIANTs as in ab_variants.sh (`-` for this tree, patch files for copies; in order, then
# reversed). Each run is `gpu_profile.py --sweep --bf16 --segments shipped` at SHAPES with
# TILES (defaults below: the LM's solve shapes; the tiles CUDA_TILES picks there and one
# other per kernel). Logs: OUTDIR/<index>_<variant>.log; OUTDIR.tgz packs them.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_kernel_ab.sh OUTDIR VARIANT...}
shift
shapes=${SHAPES:-32x512x1024,4x4096x1024}
tiles=${TILES:-gru_fwd=64/1/8/4+64/1/4/4,gru_bwd=64/1/8/3+64/1/4/4,lstm_fwd=64/1/8/4+64/1/4/4,lstm_bwd=64/1/4/3+64/2/1/3}
source "$(dirname "$0")/ab_variants.sh"
sweep() {  # TREE NAME PREFIX
    (cd "$1" && PYTHONPATH=src timeout "${RUN_SECONDS:-90}" python3 benchmarks/gpu_profile.py \
        --sweep --bf16 --segments shipped --shapes "$shapes" --tiles "$tiles") > "$3.log" 2>&1
}
ab_variants "$out" sweep "$@"
