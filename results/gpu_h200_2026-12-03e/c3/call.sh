#!/usr/bin/env bash
# twelfth session, call 3: GPU tests of the tree with eager launches outside wrap_triton,
# per-call cost tree vs main at the session's start (base), the LM rows at T = 512 (eager,
# compiled, graphs) with the Transformer, and inductor's code for the step's copy kernels
set -uo pipefail
O=$OUT/c3; mkdir -p $O
T=$PWD
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c3.tar.gz -C $OUT c3; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s12_call3.sh $O/call.sh
mkdir -p /tmp/base && tar -xzf runs/ab/base.tar.gz -C /tmp/base
PYTHONPATH=src timeout 150 python -m pytest -q -n 6 -p no:cacheprovider -rfE tests/kernels/test_head_major.py \
  tests/kernels/test_fused_compile.py tests/kernels/test_causal_conv.py tests/test_compile.py \
  tests/lm/test_train_compile.py tests/test_cuda.py tests/kernels/test_fused_paragru.py > $O/tests.log 2>&1; tail -1 $O/tests.log; pack
i=0
for v in tree base tree base; do d=$([ $v = base ] && echo /tmp/base || echo .); i=$((i+1))
  (cd $d && PYTHONPATH=src timeout 50 python $T/benchmarks/gpu_overhead.py --sections per_call --label $v --out $O/overhead_$i) >> $O/overhead_$v.log 2>&1
done
grep -h "ParaGRU\|ParaLSTM" $O/overhead_tree.log $O/overhead_base.log; pack
PYTHONPATH=src timeout 260 python benchmarks/gpu_lm_speed.py --out $O/lm512 --seq-lens 512 --compile all --steps 10 --warmup 3 --models transformer,paragru,paralstm > $O/lm512.log 2>&1
grep -h "small" $O/lm512.log; pack
TORCH_LOGS=output_code PYTHONPATH=src timeout 90 python benchmarks/gpu_lm_speed.py --out $O/code --seq-lens 512 --compile on --steps 3 --warmup 2 --models paragru > $O/code_full.log 2>&1
grep -n "def triton_poi_fused_\|def triton_per_fused_\|def triton_red_fused_" $O/code_full.log | head -80 > $O/code_kernels.txt
python - "$O/code_full.log" > $O/code_copies.txt <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
# every pointwise kernel of the step with its source (the copies are among them), and the call sites
for m in re.finditer(r"(triton_poi_fused_\d+) = async_compile\.triton\('[^']*', '''(.*?)'''", text, re.S):
    print("=" * 20, m.group(1)); print(m.group(2)[:2500])
for line in text.splitlines():
    if re.search(r"triton_poi_fused_\d+\.run\(|extern_kernels\.bmm|paragru|buf\d+ = reinterpret_tensor", line):
        print(line[:300])
PY
gzip -c $O/code_full.log > $O/code_full.log.gz; rm $O/code_full.log
date -u >> $O/date.txt; pack
