"""What the report shows of a trained VAE: per-latent KL, traversals and reconstructions.

All functions take a model exposing ``encode(x) -> (mu, logvar)``, ``decode(z)`` and
``latent_dim`` (``gmgcore.models.VAE``) and uint8 images ``[n, H, W]`` or ``[n, H, W, C]``;
images come back in the same uint8 layout so the figures need no torch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from gmgcore.models import images_to_tensor

__all__ = [
    "LatentStats",
    "latent_stats",
    "kl_order",
    "decoded_to_images",
    "reconstruct",
    "traverse",
]


class LatentStats(NamedTuple):
    """Per-latent summary over n images.

    ``kl`` ``[d]``: mean KL to the prior (nats); ``mu_std`` ``[d]``: std of the posterior mean
    over the images; ``mu`` ``[n, d]``: the posterior means themselves.
    """

    kl: np.ndarray
    mu_std: np.ndarray
    mu: np.ndarray


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


@torch.no_grad()
def _encode(model: nn.Module, images: np.ndarray, device: str, batch_size: int):
    mus, logvars = [], []
    for sl in _batches(len(images), batch_size):
        mu, logvar = model.encode(images_to_tensor(images[sl], device=device))
        mus.append(mu.double().cpu())
        logvars.append(logvar.double().cpu())
    return torch.cat(mus).numpy(), torch.cat(logvars).numpy()


def latent_stats(
    model: nn.Module, images: np.ndarray, device: str = "cpu", batch_size: int = 256
) -> LatentStats:
    """Mean KL of each latent to the prior over ``images`` ``[n, H, W(, C)]``.

    .. math:: \\mathrm{KL}_j = \\frac{1}{n}\\sum_i \\tfrac12\\left(\\mu_{ij}^2 + e^{s_{ij}}
              - s_{ij} - 1\\right), \\quad s = \\log\\sigma^2

    the closed form of KL(N(mu, sigma^2) || N(0, 1)) (Kingma & Welling 2014, appendix B),
    averaged over the n images. Collapsed (unused) latents have KL ≈ 0.
    """
    if len(images) == 0:
        raise ValueError("latent_stats needs at least one image")
    mu, logvar = _encode(model, images, device, batch_size)
    kl = 0.5 * (mu**2 + np.exp(logvar) - logvar - 1.0)
    return LatentStats(kl=kl.mean(axis=0), mu_std=mu.std(axis=0), mu=mu)


def kl_order(kl: np.ndarray) -> np.ndarray:
    """Latent indices sorted by decreasing KL ``[d]`` (ties keep index order)."""
    return np.argsort(-np.asarray(kl), kind="stable")


def decoded_to_images(model: nn.Module, out: torch.Tensor, layout_channels: bool) -> np.ndarray:
    """Decoder output ``[n, C, H, W]`` → uint8 ``[n, H, W]`` (or ``[n, H, W, C]`` if colour).

    Uses ``model.observation_mean`` (sigmoid for Bernoulli logits, identity for Gaussian means)
    when the model has one, else the sigmoid of the logits.
    """
    mean = model.observation_mean(out) if hasattr(model, "observation_mean") else out.sigmoid()
    if mean.ndim != 4:
        raise ValueError(f"decoder output has shape {tuple(mean.shape)}, expected [n, C, H, W]")
    arr = (mean.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu()
    arr = arr.permute(0, 2, 3, 1).numpy()
    return arr if layout_channels else arr[..., 0]


@torch.no_grad()
def _decode(model: nn.Module, z: torch.Tensor, colour: bool, batch_size: int) -> np.ndarray:
    parts = [
        decoded_to_images(model, model.decode(z[sl]), colour) for sl in _batches(len(z), batch_size)
    ]
    return np.concatenate(parts)


@torch.no_grad()
def reconstruct(
    model: nn.Module, images: np.ndarray, device: str = "cpu", batch_size: int = 256
) -> np.ndarray:
    """E[x | z = mu(x)] as uint8, same shape as ``images`` ``[n, H, W(, C)]``."""
    mu, _ = _encode(model, images, device, batch_size)
    z = torch.as_tensor(mu, dtype=torch.float32, device=device)
    return _decode(model, z, images.ndim == 4, batch_size)


@torch.no_grad()
def traverse(
    model: nn.Module,
    z_ref: np.ndarray,
    latents: np.ndarray,
    values: np.ndarray,
    colour: bool,
    device: str = "cpu",
    batch_size: int = 256,
) -> np.ndarray:
    """Decode ``z_ref`` ``[d]`` with latent ``latents[r]`` set to ``values[c]``.

    Returns uint8 ``[len(latents), len(values), H, W(, C)]``: row r varies one latent over the
    values while all others stay at the reference code (Higgins et al., ICLR 2017, fig. 7).
    """
    latents, values = np.asarray(latents, dtype=np.int64), np.asarray(values, dtype=np.float64)
    z = np.repeat(np.asarray(z_ref, dtype=np.float64)[None, None, :], len(latents), axis=0)
    z = np.repeat(z, len(values), axis=1)  # [rows, cols, d]
    z[np.arange(len(latents)), :, latents] = values[None, :]
    flat = torch.as_tensor(z.reshape(-1, z.shape[-1]), dtype=torch.float32, device=device)
    images = _decode(model, flat, colour, batch_size)
    return images.reshape(len(latents), len(values), *images.shape[1:])
