#!/usr/bin/env bash
# The state-tracking grid of `pararnn synthetic` on one GPU: 5 tasks x 4 one-layer models
# (ParaRNN paper, Table 1, plus modular counting and S5) x a learning-rate grid, one seed,
# at the paper's setup otherwise (width 64, length 100, 10k training sequences, AdamW,
# cosine LR). Every (task, model) keeps the learning rate of its best *validation*
# accuracy (report.best_of_grid), as the paper keeps the best of its seeds.
# The models are tiny and their steps launch-bound, so all runs go at once (JOBS, default
# every run of the grid) to keep the GPU busy; each stops at 99.9% validation accuracy, at
# STEPS steps or after LIMIT seconds of training, whichever comes first (the cosine follows
# the tighter budget, so a run cut by time still ends at a low rate), then scores its test
# sets. A run that ends while its validation accuracy still climbs is marked
# "still learning" (under-trained) in the table.
#
#   benchmarks/gpu_synthetic.sh OUTDIR [STEPS=6000] [LIMIT=320] [JOBS=all]
#
# Budget on one H200 with the defaults: under 8 minutes of wall time (start-up, then at
# most LIMIT s of training, then evaluation on 20k test sequences at the training length
# and 5k at 2x and 4x it); a job still running after LIMIT + 150 s is killed (its run is
# missing from the merged table, and its log says how far it got).
# Writes OUTDIR/results.json (the kept run of every (task, model) with its grid),
# OUTDIR/results.md (the table and the grid's validation accuracies), OUTDIR/device.txt,
# and one log and JSON per run under OUTDIR/runs/.
# Mamba2's Triton kernels autotune in every new process; 40 processes autotuning at once
# on one GPU took the whole budget before their first step (one step in 374 s, 2026-12-02),
# so one short Mamba2 run goes first, alone, with the autotune results cached
# on disk (TRITON_CACHE_AUTOTUNING) for the grid's processes to reuse.
# TASKS and MODELS (default: all) select part of the grid, e.g. to re-run one model.
# LRS (default "1e-3 3e-3"), DEVICE (default cuda) and SYNTH_ARGS (extra `pararnn
# synthetic` flags, after the script's own) allow other grids and a quick dry run
# elsewhere, e.g. DEVICE=cpu LRS=1e-3 SYNTH_ARGS="--width 16 --n-test 64 ..." .
set -uo pipefail
out=${1:?usage: benchmarks/gpu_synthetic.sh OUTDIR [STEPS] [LIMIT] [JOBS]}
steps=${2:-6000}
limit=${3:-320}
lrs=${LRS:-"1e-3 3e-3"}
tasks=${TASKS:-"parity mqar khop modcount s5"}
models=${MODELS:-"paragru paralstm transformer mamba2"}
runs=$(( $(wc -w <<< "$tasks") * $(wc -w <<< "$models") * $(wc -w <<< "$lrs") ))
jobs=${4:-$runs}
mkdir -p "$out/runs" "$out/warmup"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
# one CPU thread per job: the jobs share the host's cores (the data are made on the CPU)
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TRITON_CACHE_AUTOTUNING=1
device=${DEVICE:-cuda}
benchmarks/device_info.sh "$out/device.txt"

run_one() {  # task model lr: one training run, cut off if it overruns its share of the budget
    local name="$1_$2_lr$3"
    # shellcheck disable=SC2086  # SYNTH_ARGS is a list of flags
    timeout $((limit + 150)) python3 -m pararnn synthetic --task "$1" --model "$2" --lr "$3" \
        --device "$device" --steps "$steps" --time-limit "$limit" --n-test 20000 --n-test-long 5000 \
        ${SYNTH_ARGS:-} --out "$out/runs/$name" > "$out/runs/$name.log" 2>&1
    echo "$name: exit $? ($(tail -n 1 "$out/runs/$name.log"))"
}
export -f run_one
export out steps limit device
if [[ " $models " == *" mamba2 "* ]]; then  # the warm-up: autotune once, alone (not a result)
    # the autotune keys are the kernels' sizes (width, heads, state, chunk), the same for every task
    # shellcheck disable=SC2086
    timeout 120 python3 -m pararnn synthetic --task mqar --model mamba2 --device "$device" \
        --steps 2 --n-test 64 --n-test-long 64 ${SYNTH_ARGS:-} --out "$out/warmup/mamba2" \
        > "$out/warmup/mamba2.log" 2>&1
fi
for task in $tasks; do
    for model in $models; do
        for lr in $lrs; do
            echo "$task $model $lr"
        done
    done
done | xargs -P "$jobs" -L 1 bash -c 'run_one "$0" "$1" "$2"'

python3 - "$out" "benchmarks/gpu_synthetic.sh OUTDIR $steps $limit $jobs (LRS=\"$lrs\")" "$runs" <<'PY'
import sys
from pathlib import Path
from pararnn.synthetic.report import merge_outputs
out = Path(sys.argv[1])
parts = sorted(out.glob("runs/*/results.json"))
print(f"{len(parts)} of {sys.argv[3]} runs finished")
merge_outputs(parts, out, sys.argv[2])
print((out / "results.md").read_text())
PY
