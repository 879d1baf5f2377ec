#!/usr/bin/env bash
# sixteenth session, call 2: GPU tests after the fp32 cast of clip/tol
# LM step at T = 512 under CUDA graphs, pipelined, 3 models; ParaLSTM and the Transformer at T = 4096
set -uo pipefail
O=$OUT/c2; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c2.tar.gz -C $OUT c2; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
git log --oneline -1 >> $O/device.txt 2>/dev/null
cp runs/s16_call2.sh $O/call.sh
PYTHONPATH=src timeout -s INT -k 10 150 python -m pytest -q -n 16 -p no:cacheprovider -rfE tests/kernels tests/test_layers.py tests/test_compile.py tests/test_cuda.py tests/test_reuse.py > $O/tests.log 2>&1; tail -4 $O/tests.log; pack
PYTHONPATH=src timeout 280 python benchmarks/gpu_lm_speed.py --out $O/lm512 --seq-lens 512 --compile graphs --steps 10 --warmup 3 --models transformer,paragru,paralstm > $O/lm512.log 2>&1
grep -h "small" $O/lm512.log; pack
PYTHONPATH=src timeout 230 python benchmarks/gpu_lm_speed.py --out $O/lm4096 --seq-lens 4096 --compile graphs --steps 10 --warmup 3 --models transformer,paralstm > $O/lm4096.log 2>&1
grep -h "small" $O/lm4096.log; pack
date -u >> $O/date.txt; pack
