#!/usr/bin/env bash
# Where does the ParaRNN LM's gap to the Transformer come from? One wave of short runs on one
# GPU (RESULTS.md section 1: at 100M tokens ParaGRU ends 5.9% behind; at 20M tokens the gap
# is already 9%, so 20M-token runs can rank the options).
#
#   benchmarks/gpu_lm_ablation.sh OUTDIR SECONDS [PACK]
#
# `pararnn sweep --stages lr` with one LR per entry (each model's best in RESULTS.md section 1),
# 1,250 steps = 20.5M tokens, seed 0, the same batches in the same order, the corpus and
# tokenizer of the 100M-token comparison (python:packages, bytes), all runs at once
# (JOBS, default 12). Entries: the Transformer and Mamba2 as references, ParaGRU/ParaLSTM with
# the purely recurrent `tuned` block (the default before this ablation), and ParaRNN options
# at equal parameters: attention blocks among the recurrent ones (attn_every), wider states
# with the input projection dropped to pay for them (rnn_expand, rnn_in_proj=false), a wider
# causal conv. Safe to re-run: finished runs are
# skipped, interrupted ones resume from their checkpoint (same machine) or start again.
# Everything but checkpoints and token caches is packed into PACK (default OUTDIR.tar.gz).
#
# Environment: JOBS, STEPS (default 1250), EXTRA (more `pararnn sweep` flags, e.g. --dry-run).
set -uo pipefail
outdir=${1:?usage: benchmarks/gpu_lm_ablation.sh OUTDIR SECONDS [PACK]}
seconds=${2:?usage: benchmarks/gpu_lm_ablation.sh OUTDIR SECONDS [PACK]}
pack=${3:-${outdir%/}.tar.gz}
start=$(date +%s)
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$outdir" "$(dirname "$pack")"

variants=(
    "paragru+attn4=attn_every=4"
    "paragru+attn8=attn_every=8"
    "paralstm+attn4=attn_every=4"
    "paragru+noinproj=rnn_in_proj=false"
    "paragru+n1536=rnn_expand=3,rnn_in_proj=false"
    "paragru+n2048=rnn_expand=4,rnn_in_proj=false,rnn_heads=8"
    "paragru+conv8=conv_kernel=8"
    "paragru+attn4n1536=attn_every=4,rnn_expand=3,rnn_in_proj=false"
)
lrs=(--lrs transformer=1e-3 --lrs mamba2=2e-3 --lrs paragru=2e-3 --lrs paralstm=2e-3)
variant_args=()
for v in "${variants[@]}"; do  # ParaGRU and ParaLSTM both had their best at 2e-3
    variant_args+=(--variant "$v")
    lrs+=(--lrs "${v%%=*}=2e-3")
done

# shellcheck disable=SC2086  # EXTRA is a list of flags
python3 -m pararnn sweep --out "$outdir" --data python:packages --tokenizer byte \
    --size small --seq-len 512 --batch-size 32 --lr-steps "${STEPS:-1250}" --stages lr \
    --eval-every 250 --eval-tokens 262144 --jobs "${JOBS:-12}" --device "${DEVICE:-cuda}" --rnn-block tuned \
    --models transformer,mamba2,paragru,paralstm "${variant_args[@]}" "${lrs[@]}" \
    --time-limit $((seconds - 40)) ${EXTRA:-}
echo "(exit $?) after $(( $(date +%s) - start )) s"
tar -czf "$pack" -C "$outdir" --exclude=checkpoints --exclude=latest --exclude=tokens \
    --exclude=loss.png --exclude='.*.tmp*' .
echo "packed $(du -h "$pack" | cut -f1) in $(( $(date +%s) - start )) s"
