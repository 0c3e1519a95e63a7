"""Variational autoencoder with a Gaussian encoder and a Bernoulli or Gaussian decoder.

q(z|x) = N(mu(x), diag(exp(logvar(x)))), prior p(z) = N(0, I), and p(x|z) either
Bernoulli(sigmoid(logits(z))) per pixel or N(mean(z), I). ``build_model(config)`` rebuilds a model
from the plain dict stored in checkpoints (``VAE.config``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from gmgcore.models.architectures import (
    CONV_KERNELS,
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
)

__all__ = [
    "ARCHITECTURES",
    "LIKELIHOODS",
    "LOGIT_CLAMP",
    "VAE",
    "VAEOutput",
    "build_model",
    "images_to_tensor",
    "tensor_shape",
]

ARCHITECTURES = ("dlib_conv", "hfs_conv", "mlp")
LIKELIHOODS = ("bernoulli", "gaussian")
#: Bernoulli logits are clamped to ±LOGIT_CLAMP: saturated logits otherwise produce denormal
#: gradients that slow CPU training by ~60 % (see the project's CPU training notes).
LOGIT_CLAMP = 50.0


class VAEOutput(NamedTuple):
    """One forward pass: ``mu``, ``logvar``, ``z`` ``[n, d_z]``; ``logits`` ``[n, *shape]``
    (None when the decoder was skipped)."""

    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    logits: torch.Tensor | None


def tensor_shape(observation_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Model input shape for an observation shape: (H, W) → (1, H, W); (H, W, C) → (C, H, W)."""
    if len(observation_shape) == 2:
        return (1, *observation_shape)
    if len(observation_shape) == 3:
        h, w, c = observation_shape
        return (c, h, w)
    return tuple(observation_shape)


def images_to_tensor(
    images: np.ndarray | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """uint8 images ``[n, H, W]`` or ``[n, H, W, C]`` → float32 ``[n, C, H, W]`` in [0, 1]."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8:
        raise ValueError(f"images_to_tensor expects uint8 images, got dtype {t.dtype}")
    if t.ndim == 3:
        t = t.unsqueeze(-1)
    if t.ndim != 4:
        raise ValueError(f"images_to_tensor expects [n, H, W(, C)], got shape {tuple(t.shape)}")
    if device is not None:
        t = t.to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


class VAE(nn.Module):
    """Encoder ``x`` ``[n, *input_shape]`` → ``(mu, logvar)``; decoder ``z`` → logits/means."""

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, likelihood: str, config: Mapping[str, Any]
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood {likelihood!r}: expected one of {LIKELIHOODS}")
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = int(config["latent_dim"])
        self.config = dict(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[n, *input_shape]`` → ``(mu, logvar)`` ``[n, d_z]`` each."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` ``[n, d_z]`` → logits (Bernoulli, clamped to ±LOGIT_CLAMP) or means (Gaussian)."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            out = out.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
        return out

    def observation_mean(self, logits: torch.Tensor) -> torch.Tensor:
        """Decoder output → E[x|z]: ``sigmoid(logits)`` (Bernoulli) or the mean (Gaussian)."""
        return torch.sigmoid(logits) if self.likelihood == "bernoulli" else logits

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = mu(x)] ``[n, *input_shape]``."""
        mu, _ = self.encode(x)
        return self.observation_mean(self.decode(mu))

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, decode: bool = True
    ) -> VAEOutput:
        """Encode, sample ``z = mu + exp(logvar / 2) * eps`` (eps from ``generator``), decode."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        return VAEOutput(mu, logvar, z, self.decode(z) if decode else None)


_DEFAULTS: dict[str, Any] = {
    "architecture": "dlib_conv",
    "observation_shape": [64, 64],
    "latent_dim": 10,
    "likelihood": "bernoulli",
    "hidden": [256, 256],
}


def build_model(config: Mapping[str, Any]) -> VAE:
    """Build a VAE from a plain dict (missing keys take defaults; see ``_DEFAULTS``).

    Keys: ``architecture`` (dlib_conv | hfs_conv | mlp), ``observation_shape`` ((H, W), (H, W, C)
    or (D,)), ``latent_dim``, ``likelihood`` (bernoulli | gaussian), ``hidden`` (MLP widths).
    """
    unknown = set(config) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"model config: unknown keys {sorted(unknown)}")
    cfg = {**_DEFAULTS, **config}
    cfg["observation_shape"] = [int(s) for s in cfg["observation_shape"]]
    cfg["hidden"] = [int(h) for h in cfg["hidden"]]
    arch, d = cfg["architecture"], int(cfg["latent_dim"])
    shape = tensor_shape(tuple(cfg["observation_shape"]))
    if d < 1:
        raise ValueError(f"model config: latent_dim must be ≥ 1, got {d}")
    if arch in CONV_KERNELS:
        if len(shape) != 3 or shape[1:] != (64, 64):
            raise ValueError(f"model config: {arch} needs 64×64 images, got {shape}")
        encoder: nn.Module = ConvEncoder(shape[0], d, CONV_KERNELS[arch])
        decoder: nn.Module = ConvDecoder(shape[0], d)
    elif arch == "mlp":
        encoder, decoder = MLPEncoder(shape, d, cfg["hidden"]), MLPDecoder(shape, d, cfg["hidden"])
    else:
        raise ValueError(f"model config: architecture {arch!r}, expected one of {ARCHITECTURES}")
    return VAE(encoder, decoder, cfg["likelihood"], cfg)


def num_parameters(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
