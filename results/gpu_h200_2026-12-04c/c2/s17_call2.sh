#!/usr/bin/env bash
# seventeenth session, call 2 (tree: the conv kernels as walks over time blocks, the
# backward one kernel): GPU tests of the conv and the ops around it; the conv kernels, tree
# against the session-start kernels (runs/undo_conv_walk.patch) in turns, then the tree's
# launch sweep; LM rows at `small`, T = 512 (3 models)
set -uo pipefail
O=$OUT/c2; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c2.tar.gz -C $OUT c2; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s17_call2.sh runs/undo_conv_walk.patch $O/
PYTHONPATH=src timeout -s INT -k 10 120 python -m pytest -q -n 16 -p no:cacheprovider -rfE \
    tests/kernels/test_causal_conv.py tests/kernels/test_kernel_writes.py tests/kernels/test_cache_keys.py \
    tests/kernels/test_fused_compile.py tests/lm/test_gpu.py > $O/tests.log 2>&1
tail -4 $O/tests.log; pack
source benchmarks/ab_variants.sh
conv() {  # TREE NAME PREFIX
    (cd "$1" && PYTHONPATH=src timeout 60 python benchmarks/gpu_conv.py --out "$3" --no-compile) > "$3.log" 2>&1
    grep -h "bf16" "$3.log"
}
ab_variants $O/conv_ab conv - runs/undo_conv_walk.patch > $O/conv_ab.log 2>&1; cat $O/conv_ab.log; pack
PYTHONPATH=src timeout 90 python benchmarks/gpu_conv.py --out $O/sweep --no-compile --sweep > $O/sweep.log 2>&1
grep sweep $O/sweep.log; pack
PYTHONPATH=src timeout 230 python benchmarks/gpu_lm_speed.py --out $O/lm512 --seq-lens 512 --compile graphs \
    --steps 10 --warmup 3 --models transformer,paragru,paralstm > $O/lm512.log 2>&1
grep -h "small" $O/lm512.log; pack
date -u >> $O/date.txt; pack
