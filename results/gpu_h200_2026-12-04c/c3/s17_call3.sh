#!/usr/bin/env bash
# seventeenth session, call 3 (tree: 84137d5 + the recorder's kernel-level check): GPU tests of
# the compile paths and the conv; LM rows at `small`, T = 512 (3 models)
# and 4096 (Transformer, ParaGRU)
set -uo pipefail
O=$OUT/c3; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c3.tar.gz -C $OUT c3; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s17_call3.sh $O/
PYTHONPATH=src timeout -s INT -k 10 90 python -m pytest -q -n 16 -p no:cacheprovider -rfE \
    tests/kernels/test_fused_compile.py tests/kernels/test_causal_conv.py tests/kernels/test_kernel_writes.py \
    tests/kernels/test_cache_keys.py tests/test_compile.py > $O/tests.log 2>&1
tail -4 $O/tests.log; pack
PYTHONPATH=src timeout 190 python benchmarks/gpu_lm_speed.py --out $O/lm512 --seq-lens 512 --compile graphs \
    --steps 10 --warmup 3 --models transformer,paragru,paralstm > $O/lm512.log 2>&1
grep -h "small" $O/lm512.log; pack
PYTHONPATH=src timeout 150 python benchmarks/gpu_lm_speed.py --out $O/lm4096 --seq-lens 4096 --compile graphs \
    --steps 10 --warmup 3 --models transformer,paragru > $O/lm4096.log 2>&1
grep -h "small" $O/lm4096.log; pack
date -u >> $O/date.txt; pack
