#!/usr/bin/env bash
# twelfth session, call 1: the conv backward kernel (tree) against main's (base), GPU conv
# tests, then the triton_op A/B (tests of the patched base, compiled ParaGRU rows in turns)
set -uo pipefail
O=$OUT/c1; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c1.tar.gz -C $OUT c1; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s12_call1.sh $O/call.sh
mkdir -p /tmp/base && tar -xzf runs/ab/base.tar.gz -C /tmp/base
rm -rf /tmp/new && cp -r /tmp/base /tmp/new && patch -p1 -s -d /tmp/new < runs/ab/triton_op.patch
PYTHONPATH=src timeout 120 python -m pytest -q -n 4 -p no:cacheprovider -rfE tests/kernels/test_causal_conv.py > $O/conv_tests.log 2>&1; tail -1 $O/conv_tests.log
(cd /tmp/base && PYTHONPATH=src timeout 90 python benchmarks/gpu_conv.py --out $O/conv_base --no-compile) > $O/conv_base.log 2>&1
PYTHONPATH=src timeout 150 python benchmarks/gpu_conv.py --out $O/conv_new --no-compile --sweep > $O/conv_new.log 2>&1
grep -h "32x512x1024" $O/conv_base.log $O/conv_new.log; pack
(cd /tmp/new && PYTHONPATH=src timeout 150 python -m pytest -q -n 4 -p no:cacheprovider -rfE tests/kernels/test_fused_compile.py tests/test_compile.py tests/kernels/test_causal_conv.py) > $O/triton_op_tests.log 2>&1; tail -1 $O/triton_op_tests.log; pack
i=0
for v in base new new base; do
  i=$((i+1))
  (cd /tmp/$v && PYTHONPATH=src timeout 75 python benchmarks/gpu_lm_speed.py --out $O/${i}_$v --seq-lens 512 --compile on --steps 10 --warmup 3 --models paragru) > $O/${i}_$v.log 2>&1
  grep -h "paragru compiled" $O/${i}_$v.log; pack
done
date -u >> $O/date.txt; pack
