#!/usr/bin/env bash
# After a change to the fused kernels, in one call on the GPU machine (~9 min): are they
# still right, and what did the change do to the walks, the tiles and the LM step?
#
#   benchmarks/gpu_kernel_check.sh OUTDIR
#   TILES="gru_fwd=64/1/4,lstm_fwd=64/1/4" benchmarks/gpu_kernel_check.sh OUTDIR
#
# 1. the kernel tests on the GPU (float32, bf16 and float64 kernels: the interpreter that CI
#    runs them in does not compile what the GPU runs);
# 2. the shipped plans at the LM's solve shapes (T = 512 and 4096, bf16): the numbers to set
#    beside the last session's;
# 3. every tile × {shipped plan, 128-step segments} at 32×512×1024 bf16;
# 4. the LM step (small, T = 512, compiled) with the shipped tiles and with TILES (default:
#    the first tuning's tiles at every plan, before CUDA_TILES chose them by chains per
#    SM, with unpipelined loads: 1 stage), in the order shipped, TILES, TILES, shipped, so that a drift along the call shows
#    as a difference between the repeats;
# 5. one layer at 16×1024×512 with its kernels, host ops and the projection's weight gradient.
# Each stage has a time limit and writes its log into OUTDIR; OUTDIR.tgz packs them all.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_kernel_check.sh OUTDIR}
tiles=${TILES:-gru_fwd=128/1/4/1,gru_bwd=128/1/4/1,lstm_fwd=128/1/4/1,lstm_bwd=64/2/1/1}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
pack() { tar czf "$out.tgz" -C "$(dirname "$out")" "$(basename "$out")"; }
benchmarks/device_info.sh "$out/device.txt" > /dev/null
date -u > "$out/date.txt"

timeout -s INT -k 20 200 python3 -m pytest -q -n 4 -p no:cacheprovider -rfE \
    tests/kernels tests/test_cuda.py > "$out/gpu_tests.log" 2>&1
echo "pytest exit $?" >> "$out/gpu_tests.log"; tail -3 "$out/gpu_tests.log"; pack
timeout 35 python3 benchmarks/gpu_profile.py --sweep --shipped-tiles --segments shipped \
    --shapes 32x512x1024,4x4096x1024 --bf16 > "$out/sweep_shipped.log" 2>&1; pack
timeout 130 python3 benchmarks/gpu_profile.py --sweep --shapes 32x512x1024 --bf16 \
    --segments shipped,128/32 > "$out/sweep_tiles.log" 2>&1; pack
timeout 150 python3 benchmarks/gpu_lm_speed.py --out "$out/lm" --seq-lens 512 --compile on \
    --steps 10 --warmup 3 --models transformer,paragru,paralstm \
    --tiles "shipped;$tiles;$tiles;shipped" > "$out/lm_speed.log" 2>&1; pack
timeout 50 python3 benchmarks/gpu_profile.py --layers --shapes 16x1024x512 \
    > "$out/layers.log" 2>&1
date -u >> "$out/date.txt"; pack
