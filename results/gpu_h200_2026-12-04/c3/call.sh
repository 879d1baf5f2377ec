#!/usr/bin/env bash
# fifteenth session, call 3 (tree: 5370053 + per-call host profile): GPU tests of kernels,
# layers, compile paths; ParaLSTM tile sweep after the whole-block/pair-load change (bf16 at
# the LM's shapes, fp32 at the issue's); per-call cost with a host profile; LM rows at T = 4096
set -uo pipefail
O=$OUT/c3; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c3.tar.gz -C $OUT c3; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s15_call3.sh $O/call.sh
PYTHONPATH=src timeout -s INT -k 10 150 python -m pytest -q -n 16 -p no:cacheprovider -rfE tests/kernels tests/test_layers.py tests/test_compile.py tests/test_cuda.py tests/test_reuse.py > $O/tests.log 2>&1; tail -2 $O/tests.log; pack
T16="lstm_fwd=64/1/4/4+64/1/8/4+64/1/8/3+128/1/4/4,lstm_bwd=64/1/4/3+64/1/8/3+64/1/4/4+64/1/2/3+64/2/1/3"
PYTHONPATH=src timeout 90 python benchmarks/gpu_profile.py --sweep --bf16 --segments shipped --shapes 32x512x1024,4x4096x1024 --tiles $T16 > $O/sweep_lstm_bf16.log 2>&1
grep "^| lstm" $O/sweep_lstm_bf16.log | cut -c1-140; pack
PYTHONPATH=src timeout 60 python benchmarks/gpu_profile.py --sweep --segments shipped --shapes 16x1024x512,8x4096x1024 --tiles $T16 > $O/sweep_lstm_fp32.log 2>&1
grep "^| lstm" $O/sweep_lstm_fp32.log | cut -c1-140; pack
PYTHONPATH=src timeout 45 python benchmarks/gpu_overhead.py --out $O/overhead --sections per_call > $O/overhead.log 2>&1; tail -60 $O/overhead.log; pack
PYTHONPATH=src timeout 160 python benchmarks/gpu_lm_speed.py --out $O/lm4096 --seq-lens 4096 --compile graphs --steps 10 --warmup 3 --models transformer,paragru,paralstm > $O/lm4096.log 2>&1
grep -h "small" $O/lm4096.log; pack
date -u >> $O/date.txt; pack
