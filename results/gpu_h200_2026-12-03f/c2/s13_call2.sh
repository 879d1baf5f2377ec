#!/usr/bin/env bash
# thirteenth session, call 2: GPU tests of the tree (head_offsets; conv backward with SiLU in
# one kernel), the conv A/B (one kernel vs two) with tiles, the LM rows at T = 512 (compiled,
# graphs) with the Transformer: the compiled step without the pre-activation copy
set -uo pipefail
O=$OUT/c2; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c2.tar.gz -C $OUT c2; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s13_call2.sh runs/conv_ab.py $O/
PYTHONPATH=src timeout 100 python runs/conv_ab.py $O/conv_ab.json > $O/conv_ab.log 2>&1; cat $O/conv_ab.log | tail -9; pack
PYTHONPATH=src timeout 200 python -m pytest -q -n 8 -p no:cacheprovider -rfE tests/kernels tests/test_layers.py \
  tests/test_compile.py tests/lm/test_train_compile.py tests/test_cuda.py > $O/tests.log 2>&1; tail -3 $O/tests.log; pack
PYTHONPATH=src timeout 250 python benchmarks/gpu_lm_speed.py --out $O/lm512 --seq-lens 512 --compile on --steps 10 --warmup 3 --models transformer,paragru,paralstm > $O/lm512.log 2>&1
PYTHONPATH=src timeout 150 python benchmarks/gpu_lm_speed.py --out $O/lm512g --seq-lens 512 --compile graphs --steps 10 --warmup 3 --models transformer,paragru,paralstm > $O/lm512g.log 2>&1
grep -h "small" $O/lm512.log $O/lm512g.log; date -u >> $O/date.txt; pack
