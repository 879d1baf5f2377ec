# The variants of an A/B in one GPU call, shared by gpu_kernel_ab.sh and gpu_lm_ab.sh
# (sourced). A VARIANT is `-` (this tree as it is) or a patch file, applied with
# `patch -p1` to a copy of this tree in /tmp, e.g. a commit undone:
# `git diff C C^ -- src > undo_C.patch` (the GPU machine's copy has no usable git history,
# so patches are made here and carried). The variants run in the order given, then again
# in reverse, so that a drift along the call shows as a difference between a variant's
# two runs.
#
#   ab_variants OUTDIR RUN VARIANT...
#
# checks that every patch applies before anything runs, then for each run calls
# `RUN TREE NAME PREFIX` (PREFIX: OUTDIR/<index>_<name>, where the run writes) and packs
# OUTDIR into OUTDIR.tgz after it.
ab_variants() {
    local out=$1 run=$2
    shift 2
    [ $# -ge 1 ] || { echo "give at least one VARIANT (- or a patch file)"; exit 2; }
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    mkdir -p "$out"
    out=$(realpath "$out")
    local variant
    for variant in "$@"; do
        if [ "$variant" != "-" ] && ! patch -p1 --dry-run -s -d "$root" < "$variant" > /dev/null; then
            echo "$variant does not apply to this tree"; exit 2
        fi
    done
    local order=("$@") i index=0 name tree
    for ((i = $# - 1; i >= 0; i--)); do order+=("${order[$i]}"); done
    for variant in "${order[@]}"; do
        index=$((index + 1))
        name=$([ "$variant" = "-" ] && echo tree || basename "$variant" .patch)
        tree=$root
        if [ "$variant" != "-" ]; then
            tree=/tmp/ab_$name
            rm -rf "$tree" && mkdir -p "$tree" && cp -r "$root/src" "$root/benchmarks" "$tree/"
            patch -p1 -s -d "$tree" < "$(realpath "$variant")"
        fi
        "$run" "$tree" "$name" "$out/${index}_$name"
        echo "$index $name: exit $?"
        tar czf "$out.tgz" -C "$(dirname "$out")" "$(basename "$out")"
    done
}
