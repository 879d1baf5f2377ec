"""Scouting run: pararnn train with ModelConfig overrides and an optional forget-bias init."""
import json, math, os, sys
import torch
import pararnn.train.loop as loop
import pararnn.models as models

over = json.loads(os.environ.get("SCOUT_OVERRIDES", "{}"))
chrono = float(os.environ.get("SCOUT_CHRONO", "0"))
_preset = loop.preset
def preset(*a, **k):
    k.update(over)
    return _preset(*a, **k)
loop.preset = preset
_build = loop.build_model
def build(cfg):
    m = _build(cfg)
    if chrono > 0:
        g = torch.Generator().manual_seed(0)
        for blk in m.blocks:
            cell = blk.mixer.rnn.cell
            n = cell.bias.shape[1]
            u = 1 + torch.rand(n, generator=g) * (chrono - 2)
            with torch.no_grad():
                if cfg.model == "paragru":   # keep = 1 - z: z = sigmoid(-log u)
                    cell.bias[0] = -torch.log(u)
                else:                        # keep = f
                    cell.bias[0] = torch.log(u)
    return m
loop.build_model = build
from pararnn.train.loop import TrainConfig, train
args = json.loads(sys.argv[1])
train(TrainConfig(**args))
