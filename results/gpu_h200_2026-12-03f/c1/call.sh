#!/usr/bin/env bash
# thirteenth session, call 1: GPU tests of main (the review commit's projection path ran only on
# the CPU), inductor's code for the compiled ParaGRU step at T = 512 (which op is the full-size
# pointwise copy), a profiled compiled step of both ParaRNN LMs, the conv kernels under graphs
set -uo pipefail
O=$OUT/c1; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c1.tar.gz -C $OUT c1; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s13_call1.sh $O/call.sh
PYTHONPATH=src timeout 170 python -m pytest -q -n 8 -p no:cacheprovider -rfE tests/kernels tests/layers \
  tests/test_compile.py tests/lm/test_train_compile.py tests/test_cuda.py > $O/tests.log 2>&1; tail -1 $O/tests.log; pack
TORCH_LOGS=output_code PYTHONPATH=src timeout 100 python benchmarks/gpu_lm_speed.py --out $O/code --seq-lens 512 --compile on --steps 3 --warmup 2 --models paragru > $O/code_full.log 2>&1
grep -n "def triton_poi_fused_\|def triton_per_fused_\|def triton_red_fused_" $O/code_full.log | head -80 > $O/code_kernels.txt
python - "$O/code_full.log" > $O/code_copies.txt <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
for m in re.finditer(r"(triton_poi_fused_\w+) = async_compile\.triton\('[^']*', '''(.*?)'''", text, re.S):
    print("=" * 20, m.group(1)); print(m.group(2)[-2500:])
for line in text.splitlines():
    if re.search(r"triton_poi_fused_\w+\.run\(|extern_kernels\.bmm|paragru|pararnn|buf\d+ = reinterpret_tensor|# Topologically|# Source", line):
        print(line[:300])
PY
gzip -c $O/code_full.log > $O/code_full.log.gz; rm $O/code_full.log
tail -3 $O/code_copies.txt; pack
PYTHONPATH=src timeout 150 python benchmarks/gpu_lm_speed.py --out $O/prof --seq-lens 512 --compile on --steps 5 --warmup 3 --profile --models paragru,paralstm > $O/prof.log 2>&1
grep -h "small\|profile" $O/prof.log; pack
PYTHONPATH=src timeout 100 python benchmarks/gpu_conv.py --out $O/conv --no-compile > $O/conv.log 2>&1; tail -8 $O/conv.log
date -u >> $O/date.txt; pack
