"""pararnn._reuse.LastTensorCache, the rule behind keeping cu_seqlens checks and packed
reset bits across calls: reuse while the same tensor comes back unchanged with the same
key, never for inference tensors, and what a CUDA graph captured stays alive (the graph
reads it at every replay). Capture is stood in for on the CPU."""

import gc
import weakref

import torch

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
