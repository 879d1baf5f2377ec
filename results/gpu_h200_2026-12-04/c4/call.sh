#!/usr/bin/env bash
# fifteenth session, call 4 (tree: 5370053 + benchmark options): the LM step at T = 512
# under CUDA graphs, tree against the kernels before the whole-block/pair-load change
# (runs/undo_whole.patch) in turns, own compile caches per tree; per-call cost with
# ParaLSTM measured first; ParaLSTM's LM row at T = 4096
set -uo pipefail
O=$OUT/c4; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c4.tar.gz -C $OUT c4; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
cp runs/s15_call4.sh $O/call.sh; cp runs/undo_whole.patch $O/
PYTHONPATH=src timeout 40 python benchmarks/gpu_overhead.py --out $O/overhead --sections per_call --cells ParaLSTM,ParaGRU > $O/overhead.log 2>&1; grep "^| Para" $O/overhead.log; pack
PYTHONPATH=src timeout 75 python benchmarks/gpu_lm_speed.py --out $O/lm4096 --seq-lens 4096 --compile graphs --steps 10 --warmup 3 --models paralstm > $O/lm4096.log 2>&1
grep -h "small" $O/lm4096.log; pack
MODELS=paralstm RUN_SECONDS=55 benchmarks/gpu_lm_ab.sh $O/lm_ab - runs/undo_whole.patch > $O/lm_ab.log 2>&1; cat $O/lm_ab.log; pack
date -u >> $O/date.txt; pack
