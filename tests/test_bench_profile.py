"""benchmarks/gpu_profile.py's plan arguments on the CPU: ``--segments`` entries parse to
the plans the sweep runs, and a bad entry is a usage error, not a traceback on the GPU
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


@pytest.mark.parametrize("splits", [1, 4, 16])
def test_split_k_weight_grad_is_the_batched_product(profile, splits):
    import torch
    gen = torch.Generator().manual_seed(splits)
    a = torch.randn(4, 256, 8, generator=gen)
    g = torch.randn(4, 256, 24, generator=gen)
    got = profile.split_k_weight_grad(a, g, splits)
    want = torch.bmm(a.transpose(1, 2), g)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
