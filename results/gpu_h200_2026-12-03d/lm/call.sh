#!/usr/bin/env bash
# session 11 call B: T=512 graphs with shorter segments, T=4096 compiled + graphs
set -uo pipefail
O=$OUT/cB; mkdir -p $O
export PYTHONPATH=src PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/cB.tar.gz -C $OUT cB; }
( nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; python -c "import torch,triton;print(torch.__version__,triton.__version__)" ) > $O/device.txt 2>&1
date -u > $O/date.txt
timeout 110 python -m pytest -q -n 3 -p no:cacheprovider -rfE tests/lm/test_train_compile.py > $O/tests.log 2>&1; echo "rc=$?" >> $O/tests.log; tail -2 $O/tests.log; pack
timeout 200 python benchmarks/gpu_lm_speed.py --out $O/seg512 --seq-lens 512 --compile graphs --steps 10 --warmup 3 --models transformer,paragru,paralstm --min-seg-lens 256,128,256,128 > $O/seg512.log 2>&1; pack
timeout 240 python benchmarks/gpu_lm_speed.py --out $O/t4096 --seq-lens 4096 --compile all --steps 8 --warmup 3 --models transformer,paragru,paralstm > $O/t4096.log 2>&1; pack
date -u >> $O/date.txt; pack
