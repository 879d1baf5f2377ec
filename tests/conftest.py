import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

CONVERGED = dict(max_iters=60, tol=1e-12, on_failure="raise")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
