import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
    # pytest-xdist workers share the cores: each takes its share of torch's intra-op threads
    # (two workers with two threads each on two cores run slower than one process)
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
