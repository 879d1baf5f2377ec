#!/usr/bin/env bash
# Our layers and both peers' in one call on the GPU machine (issue: peers measured, not quoted).
#
#   benchmarks/gpu_peers.sh OUTDIR [PEER_DIR]
#
# PEER_DIR (default .peer, ignored by git: carry it) holds pararnn-torch's wheel
# (`pip download --no-deps pararnn-torch==0.17.4 -d .peer`) and a source copy of Apple's
# ml-pararnn in PEER_DIR/ml-pararnn. Builds Apple's CUDA extension in /tmp (2-4 min), then
# times ours at 1 and 8 heads, pararnn-torch at 1 head and Apple's at 1 and 8 heads with
# benchmarks/gpu_peers.py (each library in its own process: all three are called `pararnn`)
# and prints the tables. A peer that fails to install, build or run leaves a log and no
# JSON; the others still run. HEADS (default "1 8") picks the head counts: pararnn-torch
# runs only with 1 among them (it has no multi-head projection).
set -uo pipefail
out=${1:?usage: benchmarks/gpu_peers.sh OUTDIR [PEER_DIR]}
peer=$(realpath "${2:-.peer}")
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(realpath "$out")
bench=benchmarks/gpu_peers.py
exec > >(tee -a "$out/peers.log") 2>&1
echo "=== $(date -u '+%F %T UTC') gpu_peers.sh on $(nvidia-smi --query-gpu=name --format=csv,noheader)"

heads_list=${HEADS:-1 8}
for heads in $heads_list; do
    PYTHONPATH=src python $bench --impl ours --heads $heads --json "$out/peers_ours_${heads}head.json"
done

wheel=$(ls "$peer"/pararnn_torch-*.whl 2>/dev/null | head -1)
if [[ " $heads_list " != *" 1 "* ]]; then
    echo "HEADS has no 1: pararnn-torch skipped"
elif [ -z "$wheel" ]; then
    echo "no pararnn-torch wheel in $peer: skipped"
elif pip install -q --no-index --no-deps --target /tmp/pararnn_torch "$wheel"; then
    PYTHONPATH=/tmp/pararnn_torch python $bench --impl pararnn-torch --json "$out/peers_pararnn_torch.json"
fi

if [ ! -f "$peer/ml-pararnn/setup.py" ]; then
    echo "no ml-pararnn source in $peer/ml-pararnn: Apple's code skipped"
    python $bench --table "$out"/peers_*.json
    exit 0
fi
rm -rf /tmp/apple && cp -r "$peer/ml-pararnn" /tmp/apple
# Python >= 3.11 rejects a dataclass instance as a field default: make it a factory
sed -i 's/newton_config: NewtonConfig = NewtonConfig()/newton_config: NewtonConfig = dataclasses.field(default_factory=NewtonConfig)/' \
    /tmp/apple/pararnn/rnn_cell/rnn_cell_utils.py
start=$(date +%s)
if (cd /tmp/apple && TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python setup.py build_ext --inplace \
        > "$out/apple_build.log" 2>&1); then
    echo "Apple's extension built in $(( $(date +%s) - start )) s"
    for heads in $heads_list; do
        PYTHONPATH=/tmp/apple python $bench --impl apple --heads $heads --json "$out/peers_apple_${heads}head.json"
    done
else
    echo "Apple's extension failed to build: tail of $out/apple_build.log"; tail -20 "$out/apple_build.log"
fi

python $bench --table "$out"/peers_*.json
