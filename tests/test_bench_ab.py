"""The A/B harness of the GPU scripts (benchmarks/ab_variants.sh, sourced by
gpu_kernel_ab.sh and gpu_lm_ab.sh) on the CPU, with a stand-in for the timed run: the
variants run in order then reversed, each patch on a copy of the tree, and a patch that
does not apply stops the call before anything runs."""

import difflib
import shutil
import subprocess

import pytest

from benchmark_scripts import BENCHMARKS

pytestmark = pytest.mark.skipif(shutil.which("patch") is None, reason="needs patch(1)")

RUN = """
source {lib}
record() {{  # TREE NAME PREFIX: what a run would see
    echo "$2 $(grep -c ab_marker "$1/src/pararnn/__init__.py") $(basename "$3")" >> {log}
}}
ab_variants {out} record "$@"
"""


def run_harness(tmp_path, *variants):
    log = tmp_path / "runs.log"
    script = RUN.format(lib=BENCHMARKS / "ab_variants.sh", log=log, out=tmp_path / "out")
    done = subprocess.run(["bash", "-c", script, "ab", *variants], capture_output=True,
                          text=True)
    return done, log.read_text().split("\n")[:-1] if log.exists() else []


def test_variants_run_in_order_then_reversed_on_patched_copies(tmp_path):
    name = "src/pararnn/__init__.py"
    text = (BENCHMARKS.parent / name).read_text().splitlines(keepends=True)
    patch = tmp_path / "marked.patch"
    patch.write_text("".join(difflib.unified_diff(text, text + ["# ab_marker\n"],
                                                  f"a/{name}", f"b/{name}")))
    done, runs = run_harness(tmp_path, "-", str(patch))
    assert done.returncode == 0, done.stderr
    assert runs == ["tree 0 1_tree", "marked 1 2_marked", "marked 1 3_marked", "tree 0 4_tree"]
    assert (tmp_path / "out.tgz").exists()


def test_a_patch_that_does_not_apply_stops_before_any_run(tmp_path):
    bad = tmp_path / "bad.patch"
    bad.write_text("--- a/src/nothing.py\n+++ b/src/nothing.py\n@@ -1 +1 @@\n-x\n+y\n")
    done, runs = run_harness(tmp_path, "-", str(bad))
    assert done.returncode == 2 and "does not apply" in done.stdout and runs == []
