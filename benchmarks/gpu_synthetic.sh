#!/usr/bin/env bash
# The state-tracking grid of `pararnn synthetic` on one GPU: 5 tasks x 4 one-layer models
# (ParaRNN paper, Table 1, plus modular counting and S5), one seed, at the paper's setup
# (width 64, length 100, 10k train / 100k test sequences, AdamW, cosine LR from 5e-4).
# The models are tiny and their steps launch-bound, so JOBS runs go at once (all 20 by
# default, one wave) to keep the GPU busy; each run stops at 99.9% validation accuracy,
# at STEPS steps or after LIMIT seconds of training, whichever comes first (the cosine
# follows the tighter budget), then scores its test sets.
#
#   benchmarks/gpu_synthetic.sh OUTDIR [STEPS=10000] [LIMIT=330] [JOBS=20]
#
# Writes OUTDIR/results.json (every run: task, model, parameters, steps, seconds,
# accuracies at 1x/2x/4x the length, the ParaRNN state gaps, the paper's number),
# OUTDIR/results.md (the table), OUTDIR/device.txt, and one log and JSON per run under
# OUTDIR/runs/. Budgeted for under 9 minutes on one GPU with the defaults: 330 s of
# training, then evaluation; a job still running after LIMIT + 150 s is killed (its run
# is missing from the merged table, and its log says how far it got).
# DEVICE (default cuda) and SYNTH_ARGS (extra `pararnn synthetic` flags) allow a quick
# dry run elsewhere, e.g. DEVICE=cpu SYNTH_ARGS="--width 16 --n-test 64 ..." .
set -uo pipefail
out=${1:?usage: benchmarks/gpu_synthetic.sh OUTDIR [STEPS] [LIMIT] [JOBS]}
steps=${2:-10000}
limit=${3:-330}
jobs=${4:-20}
mkdir -p "$out/runs"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
# one CPU thread per job: 20 jobs share the host's cores (the data are made on the CPU)
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
device=${DEVICE:-cuda}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/device.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/device.txt"

run_one() {  # task model: one training run, cut off if it overruns its share of the budget
    # shellcheck disable=SC2086  # SYNTH_ARGS is a list of flags
    timeout $((limit + 150)) python3 -m pararnn synthetic --task "$1" --model "$2" --device "$device" \
        --steps "$steps" --time-limit "$limit" ${SYNTH_ARGS:-} --out "$out/runs/$1_$2" \
        > "$out/runs/$1_$2.log" 2>&1
    echo "$1/$2: exit $? ($(tail -n 1 "$out/runs/$1_$2.log"))"
}
export -f run_one
export out steps limit device
for task in parity mqar khop modcount s5; do
    for model in paragru paralstm transformer mamba2; do
        echo "$task $model"
    done
done | xargs -P "$jobs" -L 1 bash -c 'run_one "$0" "$1"'

python3 - "$out" "benchmarks/gpu_synthetic.sh OUTDIR $steps $limit $jobs" <<'PY'
import sys
from pathlib import Path
from pararnn.synthetic.report import merge_outputs
out = Path(sys.argv[1])
parts = sorted(out.glob("runs/*/results.json"))
print(f"{len(parts)} of 20 runs finished")
merge_outputs(parts, out, sys.argv[2])
print((out / "results.md").read_text())
PY
