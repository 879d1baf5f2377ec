#!/usr/bin/env bash
# fourteenth session, call 2 (tree 6120fff: pipelined walks; runs/base = 0f20e52, the
# register prefetch): GPU tests of the kernels, layers and compile paths; the fused
# kernels' shipped plans, base against tree (bf16 LM shapes, fp32 issue shapes); a tile
# sweep of the tree at the LM's shapes
set -uo pipefail
O=$OUT/c2; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c2.tar.gz -C $OUT c2; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s14_call2.sh $O/call.sh
PYTHONPATH=src timeout 190 python -m pytest -q -n 16 -p no:cacheprovider -rfE tests/kernels tests/test_layers.py \
  tests/test_compile.py tests/test_cuda.py > $O/tests.log 2>&1; grep -v "Benchmark\|warner" $O/tests.log | tail -12; pack
B16="--sweep --shipped-tiles --segments shipped --bf16 --shapes 32x512x1024,4x4096x1024,16x512x512"
F32="--sweep --shipped-tiles --segments shipped --shapes 8x4096x1024,1x65536x256,16x1024x512"
(PYTHONPATH=src timeout 60 python benchmarks/gpu_profile.py $B16 > $O/ab_bf16_tree.log 2>&1)
(cd runs/base && PYTHONPATH=src timeout 60 python benchmarks/gpu_profile.py $B16 > $O/ab_bf16_base.log 2>&1)
(cd runs/base && PYTHONPATH=src timeout 60 python benchmarks/gpu_profile.py $F32 > $O/ab_fp32_base.log 2>&1)
(PYTHONPATH=src timeout 60 python benchmarks/gpu_profile.py $F32 > $O/ab_fp32_tree.log 2>&1)
paste -d'#' <(grep "^| gru\|^| lstm" $O/ab_bf16_base.log) <(grep "^| gru\|^| lstm" $O/ab_bf16_tree.log) | awk -F'#' '{print $1 "  ->  " $2}' | cut -c1-200
paste -d'#' <(grep "^| gru\|^| lstm" $O/ab_fp32_base.log) <(grep "^| gru\|^| lstm" $O/ab_fp32_tree.log) | awk -F'#' '{print $1 "  ->  " $2}' | cut -c1-200
pack
T="gru_fwd=64/1/8/4+64/1/8/3+64/1/4/4+64/1/8/2,gru_bwd=64/1/8/3+64/1/8/4+64/1/4/4+64/1/4/3+128/1/4/3,lstm_fwd=64/1/8/4+64/1/8/3+64/1/4/4+128/1/4/3,lstm_bwd=64/1/4/3+64/1/2/3+64/2/1/3+64/1/8/3+32/1/2/3+64/1/4/4"
PYTHONPATH=src timeout 150 python benchmarks/gpu_profile.py --sweep --segments shipped --bf16 --shapes 32x512x1024,4x4096x1024 --tiles "$T" > $O/sweep_bf16.log 2>&1
grep "^| gru\|^| lstm" $O/sweep_bf16.log | cut -c1-120; pack
date -u >> $O/date.txt; pack
