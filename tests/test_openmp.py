"""``import pararnn`` shortens GNU OpenMP's spin-wait for the process when it can
(:mod:`pararnn._openmp`), and leaves a spin-wait the user chose alone."""

import os
import subprocess
import sys

import pytest

PROBE = "import {first}; import pararnn, os; print(os.environ.get('GOMP_SPINCOUNT'))"


def spin_count(first: str = "os", **env) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_import_before_torch_sets_the_short_spin_wait():
    from pararnn._openmp import SPIN_COUNT
    assert spin_count() == SPIN_COUNT


@pytest.mark.parametrize("env", [{"GOMP_SPINCOUNT": "123"}, {"OMP_WAIT_POLICY": "ACTIVE"}])
def test_a_spin_wait_the_user_chose_is_kept(env):
    assert spin_count(**env) == env.get("GOMP_SPINCOUNT", "None")


def test_torch_loaded_first_is_left_alone():
    """libgomp read the environment when torch loaded it: setting it then would only
    mislead."""
    assert spin_count(first="torch") == "None"
