"""Shared by the tests of the language-model block's kernels (the causal conv, the gated
norm): a one-layer LM run with the block's kernels on the test's device and without them."""

from __future__ import annotations

import torch

from pararnn.models import build_model, preset
from pararnn.models import lm as lm_module


def kernels_on(monkeypatch, device: torch.device) -> None:
    """The LM modules take their kernels on ``device`` too (the CPU under the interpreter)."""
    monkeypatch.setattr(lm_module, "_KERNEL_DEVICES", ("cuda", device.type))


def loss_and_gradients_with_and_without_kernels(monkeypatch, kernel_module, model: str,
                                                device: torch.device, **options):
    """``(kernel calls, [loss, *parameter gradients] with the kernels, the same without)``
    of a one-layer ``model`` LM of the paper's block (``options``: more of its preset's
    fields), counting the calls of ``kernel_module.forward`` (the first run's only)."""
    torch.manual_seed(0)
    lm = build_model(preset(model, d_model=32, n_layers=1, vocab_size=64, block="paper",
                            **options)).to(device)
    idx = torch.randint(0, 64, (2, 11), device=device)
    calls = []
    kernel_forward = kernel_module.forward
    monkeypatch.setattr(kernel_module, "forward",
                        lambda *args: calls.append(1) or kernel_forward(*args))
    results = []
    for devices in (("cuda", device.type), ()):
        monkeypatch.setattr(lm_module, "_KERNEL_DEVICES", devices)
        lm.zero_grad()
        loss = lm(idx, idx)
        loss.backward()
        results.append([loss.detach(), *(p.grad.clone() for p in lm.parameters())])
    return len(calls), *results
