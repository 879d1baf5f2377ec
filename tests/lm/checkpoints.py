"""Small checkpoints written directly (no training) for the generation / HF / lm-eval tests."""

from pathlib import Path

import torch

from pararnn.data.tokenizers import ByteTokenizer
from pararnn.models import build_model, preset
from pararnn.train.checkpoint import save_checkpoint


def nano_checkpoint(run_dir: Path, model: str, seed: int = 0) -> Path:
    """A nano model over the byte tokenizer with weights spread out from their small
    initial values, so that greedy continuations vary instead of echoing the prompt."""
    torch.manual_seed(seed)
    lm = build_model(preset(model, "nano", vocab_size=257, mamba_d_state=16, mamba_headdim=16,
                            mamba_chunk=8))
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    meta = {"step": 0, "model": model, "model_config": lm.cfg.to_dict()}
    save_checkpoint(run_dir, 0, lm.state_dict(), {}, meta, ByteTokenizer())
    return run_dir
