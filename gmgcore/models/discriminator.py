"""FactorVAE discriminator (Kim & Mnih, ICML 2018, Appendix: 6 dense layers, 1000 units).

D: ``z`` ``[n, d_z]`` → logits ``[n, 2]``; class 0 = "sample of q(z)", class 1 = "sample of the
product of marginals" (a dimension-wise permuted batch). Then
``TC(z) ≈ E_q[log D_0(z) − log D_1(z)]``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Discriminator"]


class Discriminator(nn.Module):
    """MLP with ``layers`` hidden LeakyReLU(0.2) layers of ``hidden`` units and 2 output logits."""

    def __init__(self, latent_dim: int, hidden: int = 1000, layers: int = 5) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        width = latent_dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        mods.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*mods)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
