"""benchmarks/gpu_profile.py's plan arguments on the CPU: ``--segments`` entries parse to
the plans the sweep runs, ``--tiles`` to its kernels' tiles, and a bad entry is a usage error, not a traceback on the GPU
machine."""

import subprocess
import sys

import pytest

from benchmark_scripts import BENCHMARKS, load_benchmark


@pytest.fixture(scope="module")
def profile():
    return load_benchmark("gpu_profile")


@pytest.mark.parametrize("text, plan", [("shipped", (None, None)), ("walk", ("walk", None)),
                                        ("128/32", (128, 32)), ("256/0", (256, 0))])
def test_segments_entries_parse(profile, text, plan):
    assert profile.parse_plan(text) == plan


@pytest.mark.parametrize("text", ["", "128", "128/32/4", "one/two", "walk/32"])
def test_bad_segments_entry_is_a_usage_error(profile, text):
    with pytest.raises(Exception, match="--segments") as err:
        profile.parse_plan(text)
    assert type(err.value).__name__ == "ArgumentTypeError"


def test_bad_segments_entry_exits_with_usage():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_profile.py"), "--sweep",
                           "--segments", "shipped,12x"], capture_output=True, text=True)
    # argparse's usage error (exit 2) comes before anything touches CUDA
    assert done.returncode == 2 and "--segments" in done.stderr, done.stderr[-2000:]


def test_tiles_parse(profile):
    assert profile.parse_tiles("gru_fwd=128/1/4/3+64/1/8/4,lstm_bwd=32/1/2/1") == {
        "gru_fwd": [(128, 1, 4, 3), (64, 1, 8, 4)], "lstm_bwd": [(32, 1, 2, 1)]}


@pytest.mark.parametrize("text", ["gru=128/1/4/3", "gru_fwd=128/1/4", "gru_fwd=128/1/4/3+",
                                  "gru_fwd=128/1/4/3/2", "gru_fwd"])
def test_bad_tiles_entry_is_a_usage_error(profile, text):
    with pytest.raises(Exception, match="--tiles") as err:
        profile.parse_tiles(text)
    assert type(err.value).__name__ == "ArgumentTypeError"
