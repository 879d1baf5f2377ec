#!/usr/bin/env bash
# Decode speed of the language models on one CUDA GPU (`--size small`, bf16, random
# weights, decode state filled at each context), replayed from a CUDA graph, in three stages:
#   1. batch 1 at contexts 512 / 8192 / 32768, the step compiled (torch.compile), every
#      model: the ParaRNN models with their default block (hybrid: one KV-cached attention
#      block in 8) and purely recurrent (`tuned`, O(1) state), the Transformer, Mamba2;
#   2. batch 1..256 at the three contexts, the step not compiled, every model;
#   3. the same sweep compiled, with the time left (compiling costs seconds per model and
#      shape class: batch 1, then one dynamic-batch graph, and for the Transformer one per
#      new KV length), models in order of interest.
# Each row comes with the memory-bandwidth bound of the step.
#
#   benchmarks/gpu_decode.sh OUTDIR [seconds]      # default 300
#
# Writes OUTDIR/decode_batch1.{json,log}, OUTDIR/decode_eager.{json,log},
# OUTDIR/decode_compiled.{json,log} and OUTDIR/summary.txt (compiled against not, and each
# ParaRNN entry against the Transformer in the same stage). The JSON files are rewritten
# after every row, so a stage cut short by its time limit keeps what it measured.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_decode.sh OUTDIR [seconds]}
budget=${2:-300}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
benchmarks/device_info.sh "$out/device.txt"

models=paragru:tuned,transformer,paragru,paralstm:tuned,paralstm,mamba2
common=(bench-decode --size small --contexts 512,8192,32768 --new-tokens 64)
sweep=(--batch-sizes 1,2,4,8,16,32,64,128,256)
timeout $((budget * 35 / 100)) python3 -m pararnn "${common[@]}" --models "$models" --batch-sizes 1 \
    --compile --json "$out/decode_batch1.json" > "$out/decode_batch1.log" 2>&1
timeout $((budget * 25 / 100)) python3 -m pararnn "${common[@]}" "${sweep[@]}" --models "$models" \
    --no-compile --json "$out/decode_eager.json" > "$out/decode_eager.log" 2>&1
timeout $((budget * 40 / 100 - 5)) python3 -m pararnn "${common[@]}" "${sweep[@]}" \
    --models paragru,transformer,paralstm,mamba2 --compile \
    --json "$out/decode_compiled.json" > "$out/decode_compiled.log" 2>&1

python3 - "$out" <<'EOF' | tee "$out/summary.txt"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
runs = {}
for mode in ("batch1", "eager", "compiled"):
    path = out / f"decode_{mode}.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    runs[mode] = {(r["model"], r["batch"], r["context"]): r for r in rows if "error" not in r}
keys = sorted(set(runs["batch1"]) | set(runs["eager"]) | set(runs["compiled"]), key=lambda k: (k[0], k[1], k[2]))
print(f"{'model':<16}{'batch':>6}{'context':>9}{'tok/s':>10}{'compiled':>10}{'gain':>7}{'of bound':>9}")
for key in keys:
    eager = runs["eager"].get(key)
    compiled = runs["compiled"].get(key) or runs["batch1"].get(key)
    # '*': the compiled run fell back to the eager step (its log has the warning)
    rate = lambda row, mark=False: (f"{row['decode_tok_s']:.0f}{'*' if mark and not row['compiled'] else ''}"
                                    if row else "-")
    gain = f"{compiled['decode_tok_s'] / eager['decode_tok_s']:.2f}x" if eager and compiled else "-"
    best = compiled or eager
    print(f"{key[0]:<16}{key[1]:>6}{key[2]:>9}{rate(eager):>10}{rate(compiled, True):>10}{gain:>7}"
          f"{best['decode_tok_s'] / best['bound_tok_s']:>9.1%}")
print()
for mode, rows in runs.items():  # the ParaRNN models against the Transformer, same step kind
    for batch in (1, 64):
        attention = rows.get(("transformer", batch, 32768))
        for model in ("paragru", "paragru:tuned", "paralstm", "paralstm:tuned", "mamba2"):
            row = rows.get((model, batch, 32768))
            if row and attention:
                print(f"{mode}: {model} / transformer at batch {batch}, context 32768: "
                      f"{row['decode_tok_s'] / attention['decode_tok_s']:.2f}x "
                      f"({row['decode_tok_s']:.0f} vs {attention['decode_tok_s']:.0f} tok/s)")
EOF
