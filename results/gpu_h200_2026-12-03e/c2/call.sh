#!/usr/bin/env bash
# twelfth session, call 2: GPU tests of the tree (triton_op ops, conv backward, head-major
# pre-activations), then the tree against main at the session's start (f7f453f, "base"):
# LM step as CUDA graphs in turns, compiled profiles, the conv kernels as CUDA graphs
set -uo pipefail
O=$OUT/c2; mkdir -p $O
T=$PWD  # the tree; its benchmark scripts time both trees (pararnn from PYTHONPATH=src)
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c2.tar.gz -C $OUT c2; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s12_call2.sh $O/call.sh
mkdir -p /tmp/base && tar -xzf runs/ab/base.tar.gz -C /tmp/base
PYTHONPATH=src timeout 170 python -m pytest -q -n 6 -p no:cacheprovider -rfE tests/kernels/test_head_major.py \
  tests/kernels/test_fused_compile.py tests/kernels/test_causal_conv.py tests/test_compile.py \
  tests/lm/test_train_compile.py tests/kernels/test_fused_paragru.py tests/kernels/test_fused_paralstm.py \
  tests/test_cuda.py tests/test_layers.py > $O/tests.log 2>&1; tail -1 $O/tests.log; pack
row() {  # row NAME TREE ARGS...
  local name=$1 tree=$2; shift 2
  (cd $tree && PYTHONPATH=src timeout 90 python $T/benchmarks/gpu_lm_speed.py --out $O/$name --seq-lens 512 --steps 10 --warmup 3 --models paragru "$@") > $O/$name.log 2>&1
  grep -h "paragru" $O/$name.log | grep -v profile | head -2; pack
}
row g1_base /tmp/base --compile graphs
row g2_tree . --compile graphs
row p_tree . --compile on --profile
row p_base /tmp/base --compile on --profile
(cd /tmp/base && PYTHONPATH=src timeout 80 python $T/benchmarks/gpu_conv.py --out $O/conv_base --no-compile) > $O/conv_base.log 2>&1
PYTHONPATH=src timeout 80 python benchmarks/gpu_conv.py --out $O/conv_tree --no-compile > $O/conv_tree.log 2>&1
grep -h "32x512x1024" $O/conv_base.log $O/conv_tree.log; pack
for v in tree base; do d=$([ $v = base ] && echo /tmp/base || echo .)
  (cd $d && PYTHONPATH=src timeout 60 python $T/benchmarks/gpu_overhead.py --sections per_call --label $v --out $O/overhead) > $O/overhead_$v.log 2>&1
  grep -h "ParaGRU\|ParaLSTM" $O/overhead_$v.log | head -4; pack
done
row g3_tree . --compile graphs
row g4_base /tmp/base --compile graphs
date -u >> $O/date.txt; pack
