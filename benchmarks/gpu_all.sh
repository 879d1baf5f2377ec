#!/usr/bin/env bash
# Everything this project checks and measures on one CUDA machine, in one go, from the
# source tree: the GPU tests, the safety-check overhead, the per-call cost, the fused-kernel,
# layer and causal-conv benchmarks, decode speed and memory. Each stage has a time limit
# and writes its log (and JSON) into OUTDIR, so a run cut short keeps what finished; OUTDIR.tgz packs it
# all into one file (the device tool returns at most 8 files).
#
#   benchmarks/gpu_all.sh OUTDIR [test-seconds] [bench-seconds] [decode-seconds]
#   PEER_DIR=.peer benchmarks/gpu_all.sh OUTDIR   # + peers (benchmarks/gpu_peers.sh)
#
# Language-model comparisons (`pararnn sweep`) and the state-tracking grid
# (benchmarks/gpu_synthetic.sh) take longer and run on their own (RESULTS.md).
set -uo pipefail
out=${1:?usage: benchmarks/gpu_all.sh OUTDIR [test-s] [bench-s] [decode-s]}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
benchmarks/device_info.sh "$out/device.txt"

# GPU tests: kernels at real sizes (fused solves, fallback walk, decode step, scans), the
# PyTorch path on CUDA, CUDA-graph capture, LM kernels and decoding, the synthetic suite,
# then the GPU tests of the CPU-heavy files. xdist workers compile Triton kernels in parallel.
# -v names every test as it finishes, and the time limit interrupts pytest as Ctrl-C does
# (it stops its xdist workers and prints the failures so far), so a stage cut short still
# says which tests failed (on 2026-12-02 a cut run showed two "F" and no names).
workers=$(( $(nproc) > 12 ? 12 : $(nproc) ))
timeout -s INT -k 30 "${2:-300}" python3 -m pytest -v -n "$workers" -p no:cacheprovider -rfE \
    tests/kernels tests/test_cuda.py tests/test_backends.py tests/lm/test_gpu.py \
    tests/lm/test_generation.py tests/synthetic/test_synthetic_gpu.py \
    > "$out/gpu_tests.log" 2>&1
grep -E "FAILED|ERROR" "$out/gpu_tests.log" | tail -20; tail -3 "$out/gpu_tests.log"
timeout 120 python3 -m pytest -q -p no:cacheprovider -rfE -m gpu \
    tests/lm/test_quality.py tests/lm/test_cli.py tests/test_context_parallel.py \
    2>&1 | tee -a "$out/gpu_tests.log" | tail -10

timeout "${3:-200}" python3 benchmarks/gpu_safety.py --out "$out" > "$out/gpu_safety.log" 2>&1
timeout 90 python3 benchmarks/gpu_overhead.py --out "$out" > "$out/gpu_overhead.log" 2>&1
timeout "${3:-200}" python3 benchmarks/gpu_fused.py --sections main,layers,narrow,baselines,sweep \
    --json "$out/gpu_fused.json" > "$out/gpu_fused.log" 2>&1
tail -40 "$out/gpu_fused.log"
timeout 150 python3 benchmarks/gpu_conv.py --out "$out" > "$out/gpu_conv.log" 2>&1
tail -20 "$out/gpu_conv.log"

# Peers in the same run, when their folder is given: PEER_DIR=.peer (pararnn-torch's wheel
# and a source copy of Apple's ml-pararnn; benchmarks/gpu_peers.sh says what goes in it)
if [ -n "${PEER_DIR:-}" ]; then
    timeout 720 benchmarks/gpu_peers.sh "$out/peers" "$PEER_DIR" | tail -45
fi

timeout "${4:-240}" python3 -m pararnn bench-decode --models paragru,paralstm,transformer,mamba2 \
    --size small --batch-sizes 1,4,16,64,256 --contexts 512,8192,32768 --new-tokens 64 \
    --json "$out/decode.json" 2>&1 | tee "$out/decode.log" | tail -25

tar czf "$out.tgz" -C "$(dirname "$out")" "$(basename "$out")"
