#!/usr/bin/env bash
# Before/after of the solver/kernel boundary on one CUDA machine, one tree after the other
# per benchmark so that both share the device and its clocks: the per-call cost of the
# layers (gpu_overhead.py --sections per_call: ms per call, kernels per call, CUDA-graph
# floor) and the cost of the checked default at the shapes where it showed
# (gpu_safety.py, checked and unchecked timed in turns). The scripts come from this tree;
# the library from BEFORE_TREE/src, then from this tree's src.
#
#   benchmarks/gpu_boundary_ab.sh BEFORE_TREE OUTDIR        (at most 200 s)
set -uo pipefail
before=${1:?usage: benchmarks/gpu_boundary_ab.sh BEFORE_TREE OUTDIR}
out=${2:?usage: benchmarks/gpu_boundary_ab.sh BEFORE_TREE OUTDIR}
before=$(cd "$before" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
for label in before after; do
    src=$([ "$label" = before ] && echo "$before/src" || echo src)
    PYTHONPATH=$src timeout 40 python3 benchmarks/gpu_overhead.py --sections per_call \
        --label "$label" --out "$out" > "$out/overhead_$label.log" 2>&1
done
for label in before after; do
    src=$([ "$label" = before ] && echo "$before/src" || echo src)
    PYTHONPATH=$src timeout 60 python3 benchmarks/gpu_safety.py --repeats 30 \
        --shapes 1x65536x256,16x1024x512 --label "$label" --out "$out" \
        > "$out/safety_$label.log" 2>&1
done
for log in "$out"/overhead_*.log "$out"/safety_*.log; do
    echo "== $log"
    grep -v Warning "$log" | tail -n 20
done
