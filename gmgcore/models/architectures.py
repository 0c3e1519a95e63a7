"""Encoder and decoder networks: two 64×64 conv families and an MLP for low-dimensional data.

Every encoder maps ``x`` ``[n, *input_shape]`` to ``(mu, logvar)`` ``[n, d_z]`` each (a Gaussian
encoder q(z|x) = N(mu, diag(exp(logvar)))); every decoder maps ``z`` ``[n, d_z]`` to unnormalised
outputs ``[n, *input_shape]`` (logits for a Bernoulli likelihood, means for a Gaussian one).

* ``dlib_conv``: disentanglement_lib's ``conv_encoder`` / ``deconv_decoder`` (Locatello et al.,
  ICML 2019, ``disentanglement_lib/methods/shared/architectures.py``). Encoder convs 32-32 with
  kernel 4 and 64-64 with **kernel 2** (all stride 2, TF "same" padding), dense 256, two dense
  heads for mean and log-variance. Decoder dense 256, dense 1024, reshape to ``[64, 4, 4]``,
  transposed convs 64-32-32-C with kernel 4, stride 2.
* ``hfs_conv``: the ``vae_locatello`` model of the HFS codebase (Roth et al., ICLR 2023,
  ``facebookresearch/disentangling-correlated-factors: dent/models/encoder/locatello.py``): the same
  layout with **kernel 4 in all four encoder convs** and a single dense head of ``2 * d_z`` units.
  Its decoder equals ``dlib_conv``'s.
* ``mlp``: fully connected ReLU networks on the flattened input, for low-dimensional data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ConvEncoder", "ConvDecoder", "MLPEncoder", "MLPDecoder", "CONV_KERNELS"]

#: Encoder kernel sizes of the four convs for each conv family.
CONV_KERNELS: dict[str, tuple[int, int, int, int]] = {
    "dlib_conv": (4, 4, 2, 2),
    "hfs_conv": (4, 4, 4, 4),
}


def _same_padding(kernel: int) -> int:
    """Padding giving TF "same" output size ``in / 2`` for stride 2 (kernel 4 → 1, kernel 2 → 0)."""
    return (kernel - 2) // 2


class ConvEncoder(nn.Module):
    """64×64 conv encoder: ``x`` ``[n, C, 64, 64]`` → ``(mu, logvar)`` ``[n, d_z]`` each."""

    def __init__(self, channels: int, latent_dim: int, kernels: Sequence[int]) -> None:
        super().__init__()
        widths = (channels, 32, 32, 64, 64)
        layers: list[nn.Module] = []
        for c_in, c_out, k in zip(widths[:-1], widths[1:], kernels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, k, stride=2, padding=_same_padding(k)), nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(64 * 4 * 4, 256), nn.ReLU())
        self.head = nn.Linear(256, 2 * latent_dim)
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-2:] != (64, 64):
            raise ValueError(f"conv encoder needs 64×64 inputs, got shape {tuple(x.shape)}")
        h = self.hidden(self.convs(x))
        mu, logvar = self.head(h).chunk(2, dim=-1)
        return mu, logvar


class ConvDecoder(nn.Module):
    """64×64 deconv decoder: ``z`` ``[n, d_z]`` → logits ``[n, C, 64, 64]``."""

    def __init__(self, channels: int, latent_dim: int) -> None:
        super().__init__()
        self.dense = nn.Sequential(
            nn.Linear(latent_dim, 256), nn.ReLU(), nn.Linear(256, 64 * 4 * 4), nn.ReLU()
        )
        widths = (64, 64, 32, 32, channels)
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if i < 3:
                layers.append(nn.ReLU())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dense(z).view(z.shape[0], 64, 4, 4)
        return self.deconvs(h)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """MLP encoder: ``x`` ``[n, *shape]`` (flattened inside) → ``(mu, logvar)`` ``[n, d_z]``."""

    def __init__(self, input_shape: Sequence[int], latent_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = _mlp([math.prod(input_shape), *hidden, 2 * latent_dim])
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x.flatten(1)).chunk(2, dim=-1)
        return mu, logvar


class MLPDecoder(nn.Module):
    """MLP decoder: ``z`` ``[n, d_z]`` → outputs ``[n, *output_shape]``."""

    def __init__(self, output_shape: Sequence[int], latent_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.net = _mlp([latent_dim, *reversed(hidden), math.prod(output_shape)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.output_shape)
