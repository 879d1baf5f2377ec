#!/usr/bin/env bash
# twelfth session, call 4: the tree with launcher() deciding by the operand's type (call 3's
# is_compiling() test launched plain kernels on fake tensors under torch 2.11): GPU tests,
# then the LM rows at T = 512, eager / compiled / graphs, with the Transformer
set -uo pipefail
O=$OUT/c4; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c4.tar.gz -C $OUT c4; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s12_call4.sh $O/call.sh
PYTHONPATH=src timeout 110 python -m pytest -q -n 6 -p no:cacheprovider -rfE tests/kernels/test_head_major.py \
  tests/kernels/test_fused_compile.py tests/test_compile.py tests/lm/test_train_compile.py tests/test_cuda.py \
  tests/kernels/test_causal_conv.py > $O/tests.log 2>&1; tail -1 $O/tests.log; pack
PYTHONPATH=src timeout 215 python benchmarks/gpu_lm_speed.py --out $O/lm512 --seq-lens 512 --compile all --steps 10 --warmup 3 --models transformer,paragru,paralstm > $O/lm512.log 2>&1
grep -h "small" $O/lm512.log; date -u >> $O/date.txt; pack
