#!/usr/bin/env bash
# The full LM-quality protocol (issue 8) on one GPU, as a chain of short calls.
#
#   benchmarks/gpu_lm_quality.sh OUTDIR SECONDS [PACK]
#
# For each sweep of SWEEPS, in order, `pararnn sweep --size small` (or medium) of
# transformer, mamba2, paragru and paralstm: stage lr (4 LRs spanning 8x, 400 steps = 6.6M
# tokens), stage seeds (the best LR, 6104 steps = 100.0M tokens, seeds 0 and 1; the same
# batches in the same order for every model) and, in the code sweeps, stage throughput
# (each model alone, 100 steps; the models' speed does not depend on the text). Sweeps:
#   code-byte, code-bpe          --data python:packages (the .py files of the standard
#                                library and site-packages, up to 400M characters)
#   shakespeare-byte, -bpe       --data $SHAKESPEARE (benchmarks/get_corpus.sh; skipped if unset)
#   prose-byte, -bpe             --data $PROSE (benchmarks/get_prose_corpus.sh: 41 MB of
#                                English: Wikipedia leads, the KJV Bible, Shakespeare and the
#                                docs of 13 Python projects; 100M tokens are ~2.6 epochs of
#                                its training split as bytes, ~8 as BPE tokens of ~3.1 bytes;
#                                skipped if unset)
#   code-byte-medium             the confirmation at --size medium (~85M parameters): the
#                                same stages, one seed (0), no throughput stage; plans
#                                scale the H200 speeds of `small` by FLOPs per token, or
#                                use MEDIUM_TOKENS_PER_S
# BPE: one 4096-token vocabulary per sweep, trained on its training split.
#
# Safe to re-run: finished runs are skipped and interrupted ones resume from a checkpoint
# at the step they reached (same batches, same LR schedule). Stops cleanly before SECONDS:
# runs in flight are stopped at SECONDS - 45 and save a checkpoint, the report is
# rebuilt and everything but checkpoints and token caches (too large to carry) is packed
# into PACK (default OUTDIR.tar.gz) with this call's log.
#
# Between calls. Checkpoints live in OUTDIR on the GPU machine, so keep OUTDIR the same
# path (say runs/lm_quality: ignored by git, so the working-tree copy leaves it alone)
# and call again within 30 s to continue runs in flight. A fresh machine starts from
# RESTORE=path/of/a/previous/PACK (carried): its finished runs count, unfinished runs
# start again from step 0.
#
# Environment:
#   CHAIN_SECONDS  device seconds left for this warm chain of calls, this one included
#                  (default SECONDS): a run starts only if it and the runs in flight are
#                  predicted to finish within it (H200 speeds in pararnn.train.sweep), so a
#                  chain that ends leaves no half-done run behind
#   SWEEPS         default "code-byte code-bpe shakespeare-byte shakespeare-bpe prose-byte
#                  prose-bpe code-byte-medium"
#   SHAKESPEARE, PROSE  folders of the English corpora (a path relative to the repository
#                  root stays the same on every machine)
#   RESTORE        a PACK of an earlier call, unpacked without overwriting newer files
#   JOBS           concurrent runs in stages lr and seeds (default 8); with TOGETHER the
#                  total over the sweeps, split evenly between them (each run is a training
#                  process of its own: 17 at once ran the H200 out of memory)
#   TOGETHER       set: run the sweeps at the same time instead of one after the other (say
#                  one sweep's last run beside another's LR stage); each plans its runs as if
#                  alone, so a run may be stopped at SECONDS and continued by the next call
#   SHAKESPEARE_FINAL_STEPS  final-run steps on Shakespeare (default 6104 = 100M tokens: ~20
#                  epochs of its 5 MB as bytes, more as BPE tokens; fewer steps overfit less
#                  and save ~1800 device-seconds per sweep for every 100M tokens cut)
#   MEDIUM_TOKENS_PER_S  measured tokens/s of one run alone at --size medium, e.g.
#                  "transformer=2.1e5,mamba2=1.2e5,paragru=1.6e5,paralstm=1.5e5" (from
#                  `benchmarks/gpu_lm_speed.py --sizes medium --compile off`): the medium
#                  sweeps' time predictions use them (FLOPs scaling is pessimistic there)
#   BPE_SEEDS      seeds of the small BPE sweeps' final runs (default 0,1; say 0 where a
#                  session has room for one seed of each model)
#   EXTRA_<sweep>  more `pararnn sweep` flags for one sweep, its name's dashes as
#                  underscores (a flag given twice: the last counts), e.g. its own LR grids
#                  or a shorter final run: EXTRA_code_byte_medium="--lrs
#                  paragru=5e-4,1e-3,2e-3,4e-3 --final-steps 3052" (50M tokens)
#   DEVICE, EXTRA  --device (default cuda) and more `pararnn sweep` flags (CPU dry runs)
#
# Example, three calls of one session (lead's machine: carry runs/state, data/shakespeare
# and data/prose, ~45 MB together):
#   CHAIN_SECONDS=1560 SHAKESPEARE=data/shakespeare PROSE=data/prose \
#     RESTORE=runs/state/lm_quality.tar.gz \
#     benchmarks/gpu_lm_quality.sh runs/lm_quality 560 $OUT/lm_quality.tar.gz
#   (then CHAIN_SECONDS=1000, then 440, each within 30 s of the last)
set -uo pipefail
outdir=${1:?usage: benchmarks/gpu_lm_quality.sh OUTDIR SECONDS [PACK]}
seconds=${2:?usage: benchmarks/gpu_lm_quality.sh OUTDIR SECONDS [PACK]}
pack=${3:-${outdir%/}.tar.gz}
start=$(date +%s)
chain=${CHAIN_SECONDS:-$seconds}
sweeps=${SWEEPS:-code-byte code-bpe shakespeare-byte shakespeare-bpe prose-byte prose-bpe code-byte-medium}
jobs=${JOBS:-8}
device=${DEVICE:-cuda}
margin=45  # stopping the runs in flight (each saves a checkpoint), the report and the pack
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$outdir" "$(dirname "$pack")"
log=$outdir/driver.log
exec > >(tee -a "$log") 2>&1
echo "=== $(date -u '+%F %T UTC') gpu_lm_quality.sh $outdir $seconds (chain $chain s) on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
if [ -n "${RESTORE:-}" ] && [ -f "$RESTORE" ]; then
    tar -xzf "$RESTORE" -C "$outdir" --skip-old-files && echo "restored $RESTORE"
fi

args_of() {  # the `pararnn sweep` flags of one sweep name
    local name=$1 size=small seeds=0,1
    case $name in *-medium) name=${name%-medium} size=medium seeds=0 ;; esac
    local corpus=${name%-*} tokenizer=${name##*-}
    [ "$tokenizer" = bpe ] && [ "$size" = small ] && seeds=${BPE_SEEDS:-$seeds}
    local data=python:packages stages=lr,seeds,throughput final=6104
    local medium_flags=() own_extra=EXTRA_${1//-/_}
    if [ "$size" = medium ]; then
        stages=lr,seeds
        [ -n "${MEDIUM_TOKENS_PER_S:-}" ] && medium_flags=(--tokens-per-s "$MEDIUM_TOKENS_PER_S")
    fi
    case $corpus in  # the English corpora: a folder named by the environment, or skipped
        shakespeare) data=${SHAKESPEARE:-} stages=lr,seeds final=${SHAKESPEARE_FINAL_STEPS:-6104} ;;
        prose) data=${PROSE:-} stages=lr,seeds ;;
    esac
    if [ "$corpus" != code ]; then [ -n "$data" ] && [ -d "$data" ] || return 1; fi
    # shellcheck disable=SC2086  # EXTRA and EXTRA_<sweep> are lists of flags
    echo --out "$outdir/$1" --data "$data" --tokenizer "$tokenizer" --vocab-size 4096 \
        --size "$size" --seq-len 512 --batch-size 32 --lr-steps 400 --final-steps "$final" \
        --seeds "$seeds" --eval-every 250 --eval-tokens 262144 --throughput-steps 100 \
        --stages "$stages" --jobs "$jobs" --device "$device" "${medium_flags[@]}" ${EXTRA:-} ${!own_extra:-}
}

if [ -n "${TOGETHER:-}" ]; then  # JOBS counts the runs of all the sweeps together
    running=0
    for name in $sweeps; do args_of "$name" > /dev/null && running=$((running + 1)); done
    [ "$running" -gt 1 ] && jobs=$(( jobs / running > 0 ? jobs / running : 1 ))
    echo "TOGETHER: $running sweeps at once, $jobs concurrent runs each"
fi

echo "--- plan (device-seconds from the H200 speeds in pararnn.train.sweep; runs sharing the GPU split it)"
pids=()
for name in $sweeps; do  # the dry runs at once: each is mostly `import torch`
    corpus=${name%%-*}
    if ! args=$(args_of "$name"); then echo "$name: skipped (set ${corpus^^} to its folder)" > "$outdir/.plan_$name"; continue; fi
    # shellcheck disable=SC2086
    python3 -m pararnn sweep $args --dry-run 2>&1 | grep -E '^(stage|estimate|pararnn)' | sed "s/^/$name: /" \
        > "$outdir/.plan_$name" &
    pids+=($!)
done
# (a bare `wait` would also wait for the log's tee: it never returns, so no `wait` at all
# when every sweep was skipped)
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
total=0
for name in $sweeps; do
    cat "$outdir/.plan_$name"
    total=$((total + $(awk '/estimate:/ {s += int($3)} END {print s + 0}' "$outdir/.plan_$name")))
    rm -f "$outdir/.plan_$name"
done
echo "total: ~$total device-seconds left = ~$(( (total + 499) / 500 )) calls of 560 s (~500 s of runs each)"

sweep_pids=()
for name in $sweeps; do
    args=$(args_of "$name") || continue
    now=$(date +%s)
    left=$((start + seconds - margin - now))
    finish=$((start + chain - margin - now))
    if [ "$left" -lt 60 ]; then echo "--- no time left for $name"; break; fi
    echo "--- $name: $left s of this call, runs must finish within $finish s"
    # shellcheck disable=SC2086
    run=(python3 -m pararnn sweep $args --time-limit "$left" --finish-within "$finish")
    if [ -n "${TOGETHER:-}" ]; then  # all sweeps at once, sharing the GPU
        "${run[@]}" 2>&1 | sed "s/^/$name: /" &
        sweep_pids+=($!)
    else
        "${run[@]}"
        echo "(exit $?)"
    fi
done
# (the sweeps' own pids: a bare `wait` would also wait for the log's tee)
[ ${#sweep_pids[@]} -gt 0 ] && wait "${sweep_pids[@]}"

echo "--- $(date -u '+%T UTC'): packing $outdir into $pack ($(( $(date +%s) - start )) s so far)"
for name in $sweeps; do
    [ -f "$outdir/$name/summary.md" ] && { echo "## $name"; cat "$outdir/$name/summary.md"; }
done > "$outdir/summary_all.md"
tar -czf "$pack" -C "$outdir" --exclude=checkpoints --exclude=latest --exclude=tokens \
    --exclude=loss.png --exclude='.*.tmp*' --exclude='./*/*/*/tokenizer.json' .  # runs' copies of */tokenizer
echo "packed $(du -h "$pack" | cut -f1); done in $(( $(date +%s) - start )) s"
