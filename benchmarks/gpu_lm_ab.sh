#!/usr/bin/env bash
# The LM training step of several trees, timed in one call on the GPU machine (A/B of a change).
#
#   benchmarks/gpu_lm_ab.sh OUTDIR VARIANT...
#
# VARIANTs as in ab_variants.sh (`-` for this tree, patch files for copies; in order, then
# reversed). Each run is `gpu_lm_speed.py --seq-lens SEQ_LENS --compile graphs --models
# MODELS` (defaults: 512, paragru) with inductor and Triton caches of its own:
# torch.compile's on-disk caches are shared by default, and trees whose fused ops do not
# declare their kernels (before `fused_op(kernels=...)`) are served each other's compiled
# graphs (seen on the H200: a base tree's LM step ran the new tree's kernels).
# Each variant's first run compiles with empty caches: keep RUN_SECONDS (default 150) well
# above the compile time (on the H200 one ParaLSTM row at T = 512 did not finish in 55 s, nor
# at T = 4096 in 75 s). Logs and JSON: OUTDIR/<index>_<variant>.*; OUTDIR.tgz packs them.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_lm_ab.sh OUTDIR VARIANT...}
shift
source "$(dirname "$0")/ab_variants.sh"
lm_step() {  # TREE NAME PREFIX
    (cd "$1" && TORCHINDUCTOR_CACHE_DIR=/tmp/ab_cache/inductor_$2 \
        TRITON_CACHE_DIR=/tmp/ab_cache/triton_$2 PYTHONPATH=src \
        timeout "${RUN_SECONDS:-150}" python3 benchmarks/gpu_lm_speed.py --out "$3" \
        --seq-lens "${SEQ_LENS:-512}" --compile graphs --steps 10 --warmup 3 \
        --models "${MODELS:-paragru}") > "$3.log" 2>&1
    local status=$?
    grep -h small "$3.log"
    return $status
}
ab_variants "$out" lm_step "$@"
