"""OpenMP's spin-wait, shortened before torch loads its OpenMP runtime.

Between parallel regions, GNU OpenMP's idle threads (torch's intra-op threads on Linux,
and the C loops' of :mod:`pararnn._cbuild`) spin ``GOMP_SPINCOUNT`` times before they
sleep: 300,000 by default, ~10 ms on CPUs whose ``pause`` takes ~140 cycles. When other
processes hold the cores, a spinning thread burns the time slice that the thread with the
work needs: on a 2-core Xeon with two busy-loop processes beside it, `tiny` LMs' AdamW
steps on two threads took 3.5-4.6 s in 3 of 9 model runs (ParaGRU's and the
Transformer's; ~0.4-0.5 s in the others), and 0.27-0.44 s in all 9 with a spin count of
10,000, which cost a quiet machine nothing measurable (BENCHMARKS.md, "CPU training path,
round 8"). libgomp reads the variable once, when it
loads, so it is set when pararnn is imported before torch, and only where the user set
neither it nor ``OMP_WAIT_POLICY``.
"""

from __future__ import annotations

import os
import sys

SPIN_COUNT = "10000"


def shorten_spin_wait() -> None:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` unless torch is loaded already (too late
    for libgomp to read it) or the user chose a spin-wait (``GOMP_SPINCOUNT`` or
    ``OMP_WAIT_POLICY`` set)."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
