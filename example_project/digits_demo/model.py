"""The model: a small MLP over the 64 pixels of an 8x8 digit."""

from __future__ import annotations

import torch
from torch import nn


def build() -> nn.Module:
    """The architecture; weights come from models/mlp.pt (a state_dict)."""
    return nn.Sequential(
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def seeded_build(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build()
