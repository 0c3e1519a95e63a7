"""Models: conv and MLP VAEs (Gaussian encoder, Bernoulli/Gaussian decoder), FactorVAE critic."""

from gmgcore.models.architectures import CONV_KERNELS
from gmgcore.models.discriminator import Discriminator
from gmgcore.models.vae import (
    ARCHITECTURES,
    LIKELIHOODS,
    LOGIT_CLAMP,
    VAE,
    VAEOutput,
    build_model,
    images_to_tensor,
    num_parameters,
    tensor_shape,
)

__all__ = [
    "ARCHITECTURES",
    "CONV_KERNELS",
    "LIKELIHOODS",
    "LOGIT_CLAMP",
    "VAE",
    "Discriminator",
    "VAEOutput",
    "build_model",
    "images_to_tensor",
    "num_parameters",
    "tensor_shape",
]
