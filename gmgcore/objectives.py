"""VAE objectives as pure tensor functions: β-VAE, β-TCVAE, FactorVAE, HFS and decoder-free.

Shapes: ``x`` ``[n, *shape]`` in [0, 1]; ``mu``, ``logvar``, ``z`` ``[n, d]``; ``logits``
``[n, *shape]``. Every loss is averaged over the batch and summed over pixels and latent
dimensions (the disentanglement_lib / HFS convention), and every objective returns an
:class:`ObjectiveResult`: the scalar loss and a dict of named scalar terms (detached) for logging.
The training loop owns optimizers (including the FactorVAE discriminator's).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gmgcore.models.vae import VAEOutput

__all__ = [
    "OBJECTIVES",
    "ObjectiveResult",
    "ObjectiveSpec",
    "beta_tcvae",
    "beta_vae",
    "compute_objective",
    "decoder_free",
    "discriminator_loss",
    "factorvae",
    "gaussian_log_density",
    "hausdorff_factorized_support",
    "kl_normal",
    "permute_dims",
    "reconstruction_nll",
    "total_correlation_mws",
]

OBJECTIVES = ("beta_vae", "beta_tcvae", "factorvae", "decoder_free")
_LOG_2PI = math.log(2.0 * math.pi)


class ObjectiveResult(NamedTuple):
    """``loss``: differentiable scalar; ``terms``: name → detached scalar tensor."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


def reconstruction_nll(x: torch.Tensor, logits: torch.Tensor, likelihood: str) -> torch.Tensor:
    r"""Batch mean of :math:`-\log p(x|z)` summed over pixels → scalar.

    Bernoulli: :math:`-\sum x \log \sigma(l) + (1-x)\log(1-\sigma(l))` (binary cross-entropy with
    logits ``l``); Gaussian with unit variance: :math:`\tfrac12\|x-l\|^2 + \tfrac{D}{2}\log 2\pi`.
    """
    n = x.shape[0]
    if likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / n
    if likelihood == "gaussian":
        sq = 0.5 * (x - logits).pow(2).sum() / n
        return sq + 0.5 * x[0].numel() * _LOG_2PI
    raise ValueError(f"likelihood {likelihood!r}: expected 'bernoulli' or 'gaussian'")


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""Per-dimension KL to the prior, averaged over the batch → ``[d]``:
    :math:`KL(N(\mu,\sigma^2) \| N(0,1)) = \tfrac12(\mu^2+\sigma^2-1-\log\sigma^2)`."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(dim=0)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""Elementwise :math:`\log N(z; \mu, e^{\mathrm{logvar}})` (broadcasting)."""
    return -0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def total_correlation_mws(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""(mutual information, total correlation, dimension-wise KL) by minibatch-weighted sampling.

    Chen et al. 2018, "Isolating sources of disentanglement in VAEs", Sec. 4.1 (MWS), with
    :math:`M = n` batch points and :math:`N` = ``dataset_size``:

    .. math::
        \log q(z_i) \approx \operatorname{LSE}_j \log q(z_i|x_j) - \log(NM),\quad
        \log q(z_{ik}) \approx \operatorname{LSE}_j \log q(z_{ik}|x_j) - \log(NM)

    MI = mean_i[log q(z_i|x_i) − log q(z_i)], TC = mean_i[log q(z_i) − Σ_k log q(z_ik)],
    dimKL = mean_i[Σ_k log q(z_ik) − log p(z_i)]; their sum is the KL estimate. The
    :math:`\log N` weights add the constant :math:`(d-1)\log N` to TC (and shift MI and dimKL),
    which leaves gradients unchanged; ``dataset_size=1`` gives the plain minibatch estimate of
    :math:`KL(q(z)\|\prod_k q(z_k))`. ``z``, ``mu``, ``logvar``: ``[n, d]``.
    """
    n = z.shape[0]
    log_norm = math.log(n * dataset_size)
    cross = gaussian_log_density(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # [n, n, d]
    log_qz = torch.logsumexp(cross.sum(2), dim=1) - log_norm
    log_qz_marginals = (torch.logsumexp(cross, dim=1) - log_norm).sum(1)
    log_qzx = gaussian_log_density(z, mu, logvar).sum(1)
    log_pz = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    mi = (log_qzx - log_qz).mean()
    tc = (log_qz - log_qz_marginals).mean()
    dim_kl = (log_qz_marginals - log_pz).mean()
    return mi, tc, dim_kl


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Permute each latent dimension independently across the batch (Kim & Mnih 2018, Alg. 1):
    samples of :math:`\\prod_k q(z_k)`. ``z``: ``[n, d]`` → ``[n, d]``."""
    n, d = z.shape
    keys = torch.rand((n, d), generator=generator, device=z.device)
    return torch.gather(z, 0, keys.argsort(dim=0))


def discriminator_loss(
    discriminator: nn.Module, z: torch.Tensor, z_permuted: torch.Tensor
) -> torch.Tensor:
    """FactorVAE critic loss: cross-entropy with class 0 for ``z`` and 1 for ``z_permuted``
    (both ``[n, d]``, detached here so only the critic trains on it) → scalar."""
    logits = discriminator(torch.cat([z.detach(), z_permuted.detach()]))
    n = z.shape[0]
    labels = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    return F.cross_entropy(logits.float(), labels.to(logits.device))


def hausdorff_factorized_support(
    mu: torch.Tensor, support_samples: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Hard Hausdorff factorized-support penalty, "HFS" (Roth et al. 2023, "Disentanglement of
    correlated factors via Hausdorff factorized support", ICLR; "hausdorff_hard" in their code).

    For every pair of latent dimensions (k, l), the support of the batch of codes
    :math:`S = \{(\mu_{c,k}, \mu_{c,l})\}_c` is compared with the factorized support
    :math:`S_k \times S_l = \{(\mu_{a,k}, \mu_{b,l})\}_{a,b}` by the one-sided Hausdorff distance
    with squared Euclidean ground cost, summed over pairs:

    .. math::
        \sum_{k<l} \max_{(a,b)} \min_c (\mu_{a,k}-\mu_{c,k})^2 + (\mu_{b,l}-\mu_{c,l})^2

    ``support_samples=None`` uses all :math:`n^2` points (a, b); an int draws that many (a, b)
    per pair with ``generator`` (the estimator of the HFS code). The max/min are located without
    gradient and the selected distances recomputed with it (same value and subgradient).
    ``mu``: ``[n, d]`` → scalar.
    """
    n, d = mu.shape
    if d < 2:
        return mu.new_zeros(())
    pairs = torch.tensor(list(itertools.combinations(range(d), 2)), device=mu.device)
    sq = (mu.T[:, :, None] - mu.T[:, None, :]).pow(2)  # [d, n, n]
    sq_k, sq_l = sq[pairs[:, 0]], sq[pairs[:, 1]]  # [P, n(a or b), n(c)]
    p_idx = torch.arange(len(pairs), device=mu.device)[:, None]
    if support_samples is None:
        grid = torch.arange(n * n, device=mu.device)
        a, b = (grid // n).expand(len(pairs), -1), (grid % n).expand(len(pairs), -1)
    else:
        shape = (len(pairs), support_samples)
        a = torch.randint(0, n, shape, generator=generator, device=mu.device)
        b = torch.randint(0, n, shape, generator=generator, device=mu.device)
    with torch.no_grad():
        dist = sq_k[p_idx, a] + sq_l[p_idx, b]  # [P, S, n(c)]
        nearest = dist.argmin(dim=2)  # [P, S]
        worst = dist.gather(2, nearest[..., None])[..., 0].argmax(dim=1, keepdim=True)  # [P, 1]
        a_w, b_w, c_w = a.gather(1, worst), b.gather(1, worst), nearest.gather(1, worst)
    return (sq_k[p_idx, a_w, c_w] + sq_l[p_idx, b_w, c_w]).sum()


@dataclass(frozen=True)
class ObjectiveSpec:
    """Which objective and its weights.

    ``name``: beta_vae | beta_tcvae | factorvae | decoder_free. ``beta``: KL weight (β-VAE,
    decoder-free) or TC weight (β-TCVAE). ``gamma``: FactorVAE TC weight. ``hfs``: HFS weight
    (0 = off); ``hfs_support_samples``: factorized-support points drawn per latent pair (None =
    all n²). ``dataset_size``: N for β-TCVAE's minibatch-weighted sampling.
    ``discriminator_hidden`` / ``discriminator_layers``: FactorVAE critic size (paper: 1000 × 5).
    """

    name: str = "beta_vae"
    beta: float = 1.0
    gamma: float = 10.0
    hfs: float = 0.0
    hfs_support_samples: int | None = 100
    likelihood: str = "bernoulli"
    dataset_size: int = 1
    discriminator_hidden: int = 1000
    discriminator_layers: int = 5

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"objective {self.name!r}: expected one of {OBJECTIVES}")

    @property
    def uses_decoder(self) -> bool:
        return self.name != "decoder_free"


def _detach(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in terms.items()}


def beta_vae(x: torch.Tensor, out: VAEOutput, beta: float, likelihood: str) -> ObjectiveResult:
    """β-VAE (Higgins et al. 2017): :math:`-\\log p(x|z) + \\beta\\,KL(q(z|x)\\|p(z))`."""
    rec = reconstruction_nll(x, out.logits, likelihood)
    kl = kl_normal(out.mu, out.logvar).sum()
    return ObjectiveResult(rec + beta * kl, _detach({"reconstruction": rec, "kl": kl}))


def beta_tcvae(
    x: torch.Tensor, out: VAEOutput, beta: float, dataset_size: int, likelihood: str
) -> ObjectiveResult:
    """β-TCVAE (Chen et al. 2018, Eq. 4 with α = γ = 1): rec + MI + β·TC + dimKL (MWS)."""
    rec = reconstruction_nll(x, out.logits, likelihood)
    mi, tc, dim_kl = total_correlation_mws(out.z, out.mu, out.logvar, dataset_size)
    kl = kl_normal(out.mu, out.logvar).sum()
    loss = rec + mi + beta * tc + dim_kl
    terms = {"reconstruction": rec, "kl": kl, "mi": mi, "tc": tc, "dim_kl": dim_kl}
    return ObjectiveResult(loss, _detach(terms))


def factorvae(
    x: torch.Tensor, out: VAEOutput, gamma: float, discriminator: nn.Module, likelihood: str
) -> ObjectiveResult:
    """FactorVAE (Kim & Mnih 2018, Eq. 2): rec + KL + γ·TC with the density-ratio estimate
    :math:`TC \\approx \\text{mean}_i [D_0(z_i) - D_1(z_i)]` (critic logits)."""
    rec = reconstruction_nll(x, out.logits, likelihood)
    kl = kl_normal(out.mu, out.logvar).sum()
    logits = discriminator(out.z).float()
    tc = (logits[:, 0] - logits[:, 1]).mean()
    terms = {"reconstruction": rec, "kl": kl, "tc": tc}
    return ObjectiveResult(rec + kl + gamma * tc, _detach(terms))


def decoder_free(out: VAEOutput, beta: float) -> ObjectiveResult:
    """Encoder-only prior matching :math:`\\beta\\,KL(q(z|x)\\|N(0, I))`; no reconstruction."""
    kl = kl_normal(out.mu, out.logvar).sum()
    return ObjectiveResult(beta * kl, {"kl": kl.detach()})


def compute_objective(
    spec: ObjectiveSpec,
    x: torch.Tensor,
    out: VAEOutput,
    discriminator: nn.Module | None = None,
    generator: torch.Generator | None = None,
) -> ObjectiveResult:
    """Dispatch on ``spec.name`` and add ``spec.hfs`` × HFS(mu) when ``spec.hfs > 0``."""
    if spec.name == "beta_vae":
        res = beta_vae(x, out, spec.beta, spec.likelihood)
    elif spec.name == "beta_tcvae":
        res = beta_tcvae(x, out, spec.beta, spec.dataset_size, spec.likelihood)
    elif spec.name == "factorvae":
        if discriminator is None:
            raise ValueError("objective 'factorvae' needs a discriminator")
        res = factorvae(x, out, spec.gamma, discriminator, spec.likelihood)
    else:
        res = decoder_free(out, spec.beta)
    if spec.hfs > 0:
        hfs = hausdorff_factorized_support(out.mu, spec.hfs_support_samples, generator)
        res = ObjectiveResult(res.loss + spec.hfs * hfs, {**res.terms, "hfs": hfs.detach()})
    return res
