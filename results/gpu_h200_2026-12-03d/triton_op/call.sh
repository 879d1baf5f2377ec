#!/usr/bin/env bash
# session 11 call A: triton_op branch on the GPU (tests, compiled LM step vs the custom_op tree), GRU bwd A/B
set -uo pipefail
O=$OUT/cA; mkdir -p $O
export PYTHONPATH=src PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/cA.tar.gz -C $OUT cA; }
( nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; python -c "import torch,triton;print(torch.__version__,triton.__version__)" ) > $O/device.txt 2>&1
date -u > $O/date.txt
timeout 200 python -m pytest -q -n 4 -p no:cacheprovider -rfE tests/kernels/test_fused_compile.py tests/test_compile.py tests/lm/test_train_compile.py tests/kernels/test_causal_conv.py tests/test_cuda.py > $O/tests.log 2>&1; echo "rc=$?" >> $O/tests.log; tail -3 $O/tests.log; pack
timeout 170 python benchmarks/gpu_lm_speed.py --out $O/lm_new --seq-lens 512 --compile on --steps 10 --warmup 3 --models transformer,paragru,paralstm --profile > $O/lm_new.log 2>&1; pack
rm -rf /tmp/base && mkdir -p /tmp/base && cp -r src benchmarks /tmp/base/ && patch -p1 -s -d /tmp/base < runs/ab/custom_op.patch
(cd /tmp/base && timeout 100 python benchmarks/gpu_lm_speed.py --out $O/lm_base --seq-lens 512 --compile on --steps 10 --warmup 3 --models paragru --profile) > $O/lm_base.log 2>&1; pack
SHAPES=32x512x1024 TILES="gru_bwd=128/1/4+64/1/4,gru_fwd=64/1/8" RUN_SECONDS=40 timeout 150 bash /tmp/base/benchmarks/gpu_kernel_ab.sh $O/ab - $PWD/runs/ab/undo_step_offsets.patch $PWD/runs/ab/ninth_kernels.patch > $O/ab.log 2>&1; pack
date -u >> $O/date.txt; pack
