"""One rule, used wherever an eager fast path skips autograd's bookkeeping."""

import torch


def needs_grad(*tensors) -> bool:
    """Whether autograd must record an op on ``tensors`` (``None`` entries are ignored):
    grad mode is on and one of them requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
