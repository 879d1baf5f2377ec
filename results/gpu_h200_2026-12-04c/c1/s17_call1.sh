#!/usr/bin/env bash
# seventeenth session, call 1 (tree: session start a27fc50): the GPU tests not run since the
# ParaLSTM output change (LM, generation, synthetic, context parallel); the decode step
# compiled, tree against the tree before the decode kernels' fp32 clip
# (runs/undo_decode_clip.patch), in turns; LM rows at `medium`, T = 512
set -uo pipefail
O=$OUT/c1; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c1.tar.gz -C $OUT c1; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s17_call1.sh runs/undo_decode_clip.patch $O/
PYTHONPATH=src timeout -s INT -k 10 200 python -m pytest -q -n 16 -p no:cacheprovider -rfE \
    tests/lm/test_gpu.py tests/lm/test_generation.py tests/synthetic/test_synthetic_gpu.py \
    tests/test_backends.py tests/test_decode_clip_compile.py > $O/tests.log 2>&1
PYTHONPATH=src timeout 100 python -m pytest -q -p no:cacheprovider -rfE -m gpu \
    tests/lm/test_quality.py tests/lm/test_cli.py tests/test_context_parallel.py >> $O/tests.log 2>&1
grep -E "passed|failed|FAILED|ERROR" $O/tests.log | tail -12; pack
decode() {  # TREE NAME
    (cd "$1" && TORCHINDUCTOR_CACHE_DIR=/tmp/dc_$2 TRITON_CACHE_DIR=/tmp/dt_$2 PYTHONPATH=src \
        timeout 80 python -m pararnn bench-decode --models paragru,paralstm --size small \
        --batch-sizes 1,16 --contexts 512 --new-tokens 64 --compile --json $O/decode_$2.json) \
        > $O/decode_$2.log 2>&1
    tail -6 $O/decode_$2.log
}
rm -rf /tmp/ab_base && mkdir -p /tmp/ab_base && cp -r src benchmarks /tmp/ab_base/ \
    && patch -p1 -s -d /tmp/ab_base < runs/undo_decode_clip.patch
decode . tree1; decode /tmp/ab_base base1; decode /tmp/ab_base base2; decode . tree2; pack
PYTHONPATH=src timeout 170 python benchmarks/gpu_lm_speed.py --out $O/lm512m --sizes medium \
    --seq-lens 512 --compile graphs --steps 10 --warmup 3 --models transformer,paragru > $O/lm512m.log 2>&1
grep -h "medium" $O/lm512m.log; pack
date -u >> $O/date.txt; pack
