#!/usr/bin/env bash
# fourteenth session, call 1 (main at 0f20e52 + prototypes under runs/proto): the GRU
# kernels' walk with Triton's software pipeliner (cp.async stages) against the shipped
# register prefetch, by tile and stage count; packed documents after the cu_seqlens
# read-once change; the conv benchmark with its sweep
set -uo pipefail
O=$OUT/c1; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c1.tar.gz -C $OUT c1; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s14_call1.sh $O/call.sh; cp -r runs/proto $O/
PYTHONPATH=src timeout 300 python runs/proto/ab.py $O/pipe_ab.json > $O/pipe_ab.log 2>&1; tail -3 $O/pipe_ab.log; pack
PYTHONPATH=src timeout 100 python benchmarks/gpu_packed.py --out $O/packed > $O/packed.log 2>&1; tail -22 $O/packed.log; pack
PYTHONPATH=src timeout 120 python benchmarks/gpu_conv.py --out $O/conv --no-compile --sweep > $O/conv.log 2>&1; tail -30 $O/conv.log; pack
date -u >> $O/date.txt; pack
