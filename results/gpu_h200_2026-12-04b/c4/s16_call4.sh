#!/usr/bin/env bash
# sixteenth session, call 4 (tree: 367c7d1, ParaLSTM layer writes h alone): GPU tests of the
# changed paths; the LM step at T = 512 (CUDA graphs, pipelined) of ParaLSTM, tree against
# the tree before the change (runs/undo_hidden.patch) in turns; the Transformer and ParaGRU
# in the same call for the ratio
set -uo pipefail
O=$OUT/c4; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c4.tar.gz -C $OUT c4; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s16_call4.sh runs/undo_hidden.patch $O/
PYTHONPATH=src timeout -s INT -k 10 130 python -m pytest -q -n 16 -p no:cacheprovider -rfE tests/kernels/test_fused_paralstm.py tests/kernels/test_fused_compile.py tests/kernels/test_kernel_writes.py tests/kernels/test_solver_triton.py tests/kernels/test_head_major.py tests/kernels/test_fused_fallback.py tests/test_compile.py tests/test_cuda.py tests/test_layers.py > $O/tests.log 2>&1; tail -4 $O/tests.log; pack
MODELS=paralstm RUN_SECONDS=110 benchmarks/gpu_lm_ab.sh $O/lm_ab - runs/undo_hidden.patch > $O/lm_ab.log 2>&1; cat $O/lm_ab.log; pack
PYTHONPATH=src timeout 120 python benchmarks/gpu_lm_speed.py --out $O/lm512 --seq-lens 512 --compile graphs --steps 10 --warmup 3 --models transformer,paragru > $O/lm512.log 2>&1
grep -h "small" $O/lm512.log; pack
date -u >> $O/date.txt; pack
