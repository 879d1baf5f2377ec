"""pararnn._reuse.LastTensorCache, the rule behind keeping cu_seqlens checks and packed
reset bits across calls: reuse while the same tensor comes back unchanged with the same
key, never for inference tensors, a CPU tensor's values compared as well (writes that
bypass the version counter), and what a CUDA graph captured stays alive (the graph reads it
at every replay). Capture is stood in for on the CPU."""

import gc
import weakref

import numpy as np
import torch

import pararnn
from pararnn import _reuse


class Built:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return torch.zeros(3)


def test_reuse_while_unchanged_with_the_same_key():
    cache, build, t = _reuse.LastTensorCache(), Built(), torch.ones(4)
    first = cache.get("s", t, 1, build)
    assert cache.get("s", t, 1, build) is first and build.calls == 1
    assert cache.get("s", t, 2, build) is not first and build.calls == 2  # another key
    t.add_(1)  # an in-place write: built again
    cache.get("s", t, 2, build)
    assert build.calls == 3
    cache.get("s", t.clone(), 2, build)  # the same values in another tensor
    assert build.calls == 4
    with torch.inference_mode():
        frozen = torch.ones(4)
        cache.get("s", frozen, 2, build)
        cache.get("s", frozen, 2, build)
    assert build.calls == 6


def test_cpu_tensor_written_behind_the_version_counter_is_seen():
    """Writes through ``.data`` or a numpy array sharing the memory leave ``_version`` as it
    was; on the CPU the cache compares the values too."""
    cache, build = _reuse.LastTensorCache(), Built()
    buffer = np.array([0, 3, 7])
    t = torch.from_numpy(buffer)
    cache.get("s", t, 1, build)
    version = t._version
    buffer[1] = 5
    t.data[2] = 8
    assert t._version == version
    cache.get("s", t, 1, build)
    assert build.calls == 2
    cache.get("s", t, 1, build)  # unchanged since: reused
    assert build.calls == 2


def test_packed_documents_refilled_in_place_are_read_again():
    """A loader that refills the same host buffer of ``cu_seqlens``: the layer uses the new
    document boundaries (it used the cached ones of the first call)."""
    torch.manual_seed(0)
    layer = pararnn.ParaGRU(4, 8, mode="sequential")
    x = torch.randn(1, 7, 4)
    buffer = np.array([0, 3, 7])
    cu_seqlens = torch.from_numpy(buffer)
    layer(x, cu_seqlens=cu_seqlens)
    buffer[1] = 5
    out, h_n = layer(x, cu_seqlens=cu_seqlens)
    want, want_h = layer(x, cu_seqlens=torch.tensor([0, 5, 7]))
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(h_n, want_h, rtol=0, atol=0)


def test_a_value_reused_during_a_capture_outlives_its_slot(monkeypatch):
    cache, build, t = _reuse.LastTensorCache(), Built(), torch.ones(4)
    value = cache.get("s", t, 1, build)
    monkeypatch.setattr(_reuse, "_capturing", lambda tensor: True)
    assert cache.get("s", t, 1, build) is value  # reused by the captured graph
    other = torch.ones(4)
    captured_miss = cache.get("s", other, 1, build)  # built during capture: not kept
    assert cache.get("s", other, 1, build) is not captured_miss
    monkeypatch.setattr(_reuse, "_capturing", lambda tensor: False)
    cache.get("s", other, 1, build)  # the slot moves on
    alive = weakref.ref(value)
    del value
    gc.collect()
    assert alive() is not None
