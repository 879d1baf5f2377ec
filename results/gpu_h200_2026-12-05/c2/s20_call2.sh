#!/usr/bin/env bash
# (session 20) s19_call2's A/B (this tree / undo_both / split_in_proj, ParaGRU T = 512),
# then in the time left s19_call4's T = 4096 rows (Transformer, hybrid, pure recurrent)
set -uo pipefail
O=$OUT/c2; mkdir -p $O
export PYTHONUNBUFFERED=1
start=$(date +%s)
pack() { tar -czf $OUT/c2.tar.gz -C $OUT c2; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
cp runs/s20_call2.sh runs/undo_both.patch runs/split_in_proj.patch $O/
MODELS=paragru RUN_SECONDS=100 timeout 420 benchmarks/gpu_lm_ab.sh $O/lm_ab - runs/undo_both.patch \
    runs/split_in_proj.patch > $O/lm_ab.log 2>&1
cat $O/lm_ab.log; pack
left=$(( 585 - ($(date +%s) - start) ))
echo "left for T=4096: $left s"
if [ $left -gt 60 ]; then
PYTHONPATH=src timeout $left python benchmarks/gpu_lm_speed.py --out $O/lm4096 --seq-lens 4096 --compile graphs \
    --steps 10 --warmup 3 --models transformer,paragru,paragru:tuned > $O/lm4096.log 2>&1
grep -v Warning $O/lm4096.log | tail -12
fi
date -u >> $O/date.txt; pack
