"""Objectives against closed forms and torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D

from gmgcore.models import VAEOutput
from gmgcore.objectives import (
    OBJECTIVES,
    ObjectiveSpec,
    compute_objective,
    discriminator_loss,
    hausdorff_factorized_support,
    kl_normal,
    permute_dims,
    reconstruction_nll,
    total_correlation_mws,
)


def _posterior(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    logvar = 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, d, generator=g, dtype=torch.float64)
    return mu, logvar, z


def test_kl_normal_matches_torch_distributions() -> None:
    mu, logvar, _ = _posterior(8, 3)
    q = D.Normal(mu, torch.exp(0.5 * logvar))
    expected = D.kl_divergence(q, D.Normal(0.0, 1.0)).mean(0)
    torch.testing.assert_close(kl_normal(mu, logvar), expected)


def test_reconstruction_nll_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 5, 5, generator=g, dtype=torch.float64)
    logits = 3 * torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64)
    bern = -D.Bernoulli(logits=logits, validate_args=False).log_prob(x).sum() / 4
    gauss = -D.Normal(logits, 1.0).log_prob(x).sum() / 4
    torch.testing.assert_close(reconstruction_nll(x, logits, "bernoulli"), bern)
    torch.testing.assert_close(reconstruction_nll(x, logits, "gaussian"), gauss)


def _aggregate_gaussian(rho: float, n: int) -> tuple[torch.Tensor, ...]:
    """Codes mu ~ N(0, C), posteriors N(mu, s²I): the aggregate posterior is N(0, C + s²I)."""
    g = torch.Generator().manual_seed(0)
    s2 = 0.5
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    mu = torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    logvar = torch.full_like(mu, math.log(s2))
    z = mu + math.sqrt(s2) * torch.randn(n, 2, generator=g, dtype=torch.float64)
    agg = cov + s2 * torch.eye(2, dtype=torch.float64)
    tc = 0.5 * (torch.log(torch.diag(agg)).sum() - torch.logdet(agg))  # Gaussian TC
    return z, mu, logvar, tc


@pytest.mark.parametrize("rho", [0.0, 0.8])
def test_total_correlation_matches_gaussian_closed_form(rho: float) -> None:
    z, mu, logvar, expected = _aggregate_gaussian(rho, 2000)
    _, tc, _ = total_correlation_mws(z, mu, logvar, dataset_size=1)
    assert expected.item() == pytest.approx(0.0 if rho == 0 else 0.1673, abs=1e-3)
    assert tc.item() == pytest.approx(expected.item(), abs=0.02)


def test_mws_weights_shift_tc_by_constant_and_keep_kl_decomposition() -> None:
    mu, logvar, z = _posterior(32, 4)
    n_data = 1000
    mi1, tc1, dk1 = total_correlation_mws(z, mu, logvar, 1)
    mi, tc, dk = total_correlation_mws(z, mu, logvar, n_data)
    torch.testing.assert_close(tc - tc1, torch.tensor(3 * math.log(n_data), dtype=tc.dtype))
    # MI + TC + dimKL = mean[log q(z|x) − log p(z)], the Monte-Carlo KL, whatever the weights.
    log_qzx = D.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(1)
    log_pz = D.Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(mi + tc + dk, (log_qzx - log_pz).mean())
    torch.testing.assert_close(mi1 + tc1 + dk1, (log_qzx - log_pz).mean())


def test_permute_dims_permutes_each_column_independently() -> None:
    z = torch.arange(40.0).view(10, 4)
    zp = permute_dims(z, torch.Generator().manual_seed(0))
    for k in range(4):
        assert torch.equal(zp[:, k].sort().values, z[:, k])
    assert not torch.equal(zp, z)
    rows = {tuple(r) for r in (zp - zp[:, :1]).tolist()}
    assert len(rows) > 1  # columns are not moved together


def test_hfs_is_zero_on_a_factorized_support_and_matches_diagonal_closed_form() -> None:
    grid = torch.cartesian_prod(torch.arange(3.0), torch.tensor([0.0, 5.0]), torch.arange(2.0))
    assert hausdorff_factorized_support(grid).item() == 0.0
    # Codes on the diagonal {(t, t, t)}, t ∈ {0, 1, 2}: the factorized point (0, 2) is nearest
    # to (1, 1) at squared distance 2, for each of the 3 pairs.
    diag = torch.arange(3.0)[:, None].expand(3, 3)
    assert hausdorff_factorized_support(diag).item() == 6.0
    # Sampling the factorized support never exceeds the exact value.
    mu, _, _ = _posterior(16, 3)
    exact = hausdorff_factorized_support(mu)
    sampled = hausdorff_factorized_support(mu, 20, torch.Generator().manual_seed(0))
    assert 0 < sampled <= exact


def test_discriminator_loss_of_a_constant_critic_is_log2() -> None:
    class Constant(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.zeros(z.shape[0], 2)

    z = torch.randn(6, 3)
    assert discriminator_loss(Constant(), z, z).item() == pytest.approx(math.log(2))


def _output(n: int = 8, d: int = 3) -> tuple[torch.Tensor, VAEOutput]:
    mu, logvar, z = (t.float() for t in _posterior(n, d))
    logits = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    x = (torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    return x, VAEOutput(mu, logvar, z, logits)


@pytest.mark.parametrize("name", OBJECTIVES)
@pytest.mark.parametrize("hfs", [0.0, 2.0])
def test_objective_losses_combine_their_terms(name: str, hfs: float) -> None:
    x, out = _output()
    disc = torch.nn.Linear(3, 2)
    spec = ObjectiveSpec(name=name, beta=4.0, gamma=3.0, hfs=hfs, dataset_size=100)
    res = compute_objective(spec, x, out, disc, torch.Generator().manual_seed(0))
    t = res.terms
    expected = {
        "beta_vae": lambda: t["reconstruction"] + 4.0 * t["kl"],
        "beta_tcvae": lambda: t["reconstruction"] + t["mi"] + 4.0 * t["tc"] + t["dim_kl"],
        "factorvae": lambda: t["reconstruction"] + t["kl"] + 3.0 * t["tc"],
        "decoder_free": lambda: 4.0 * t["kl"],
    }[name]()
    if hfs:
        expected = expected + hfs * t["hfs"]
    torch.testing.assert_close(res.loss.detach(), expected)
    assert ("reconstruction" in t) == spec.uses_decoder
    assert all(not v.requires_grad for v in t.values())


def test_unknown_objective_is_rejected() -> None:
    with pytest.raises(ValueError, match="objective 'vae'"):
        ObjectiveSpec(name="vae")
