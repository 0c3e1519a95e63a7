"""Pairwise costs: closed forms, invariances, low-rank factors and fp32 accuracy on images."""

from __future__ import annotations

import pytest
import torch

from gmgcore import costs

F64 = torch.float64


def _cloud(n: int = 9, shape: tuple[int, ...] = (3, 4), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=F64)


def _direct(x: torch.Tensor, kind: str, center: bool = False) -> torch.Tensor:
    """Reference costs from explicit pairwise differences / products (no Gram trick)."""
    r = x.reshape(x.shape[0], -1)
    if center and kind in ("cosine", "inner_product"):
        r = r - r.mean(0)
    if kind in ("sqeuclidean", "scaled_sqeuclidean"):
        C = ((r[:, None, :] - r[None, :, :]) ** 2).sum(-1)
        return C / C.mean() if kind == "scaled_sqeuclidean" else C
    dots = (r[:, None, :] * r[None, :, :]).sum(-1)
    if kind == "inner_product":
        return dots
    norms = r.norm(dim=1)
    return dots / (norms[:, None] * norms[None, :])


@pytest.mark.parametrize("kind", costs.COST_NAMES)
@pytest.mark.parametrize("center", [False, True])
def test_costs_match_direct_formulas(kind: str, center: bool) -> None:
    x = _cloud() + 2.0
    C = costs.pairwise_cost(x, kind, center=center)
    assert C.shape == (9, 9)
    torch.testing.assert_close(C, _direct(x, kind, center), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(C, C.T, rtol=0, atol=0)


@pytest.mark.parametrize("kind", costs.COST_NAMES)
@pytest.mark.parametrize("center", [False, True])
def test_cost_gradients_match_the_direct_formulas(kind: str, center: bool) -> None:
    # The Gram matrix has its own backward pass; compare it with autograd through the
    # explicit pairwise formula, for a random upstream gradient.
    x = _cloud(n=6) + 2.0
    W = torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    grads = []
    for fn in (lambda v: costs.pairwise_cost(v, kind, center=center), lambda v: _direct(v, kind,
                                                                                       center)):
        v = x.clone().requires_grad_(True)
        (fn(v) * W).sum().backward()
        grads.append(v.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-10)


def test_sqeuclidean_invariances() -> None:
    x = _cloud(shape=(5,))
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=F64))
    C = costs.pairwise_cost(x, "sqeuclidean")
    assert (C.diagonal() == 0).all() and (C >= 0).all()
    torch.testing.assert_close(costs.pairwise_cost(x @ Q + 7.0, "sqeuclidean"), C)
    scaled = costs.pairwise_cost(x, "scaled_sqeuclidean")
    torch.testing.assert_close(costs.pairwise_cost(-3.5 * x @ Q, "scaled_sqeuclidean"), scaled)
    torch.testing.assert_close(scaled.mean(), torch.tensor(1.0, dtype=F64))


def test_cosine_and_inner_product_invariances() -> None:
    x = _cloud(shape=(5,))
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(2), dtype=F64))
    row_scale = torch.rand(9, 1, generator=torch.Generator().manual_seed(3), dtype=F64) + 0.1
    cos = costs.pairwise_cost(x, "cosine")
    torch.testing.assert_close(costs.pairwise_cost(row_scale * (x @ Q), "cosine"), cos)
    torch.testing.assert_close(cos.diagonal(), torch.ones(9, dtype=F64))
    inner = costs.pairwise_cost(x, "inner_product")
    torch.testing.assert_close(costs.pairwise_cost(x @ Q, "inner_product"), inner)
    centred = costs.pairwise_cost(x, "inner_product", center=True)
    torch.testing.assert_close(centred.sum(1), torch.zeros(9, dtype=F64), rtol=0, atol=1e-12)


def test_cosine_of_a_zero_row_is_zero_and_has_finite_gradient() -> None:
    x = _cloud(n=4, shape=(3,))
    x[2] = 0.0
    x.requires_grad_(True)
    C = costs.pairwise_cost(x, "cosine")
    assert torch.isfinite(C).all() and (C[2] == 0).all()
    C.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kind", costs.COST_NAMES)
def test_low_rank_factors_reproduce_the_cost(kind: str) -> None:
    x = _cloud(n=20, shape=(3,)) + 1.0
    A, B = costs.pairwise_cost_factors(x, kind, center=True)
    assert A.shape == B.shape == (20, costs.cost_rank(x, kind))
    C = costs.pairwise_cost(x, kind, center=True)
    off = ~torch.eye(20, dtype=torch.bool)
    torch.testing.assert_close((A @ B.T)[off], C[off], rtol=1e-10, atol=1e-10)


def test_fp32_sqeuclidean_on_near_constant_images() -> None:
    """64 near-constant 64×64×3 images (|x|² ≈ 5000, squared distances ≈ 0.01): the centred
    Gram form keeps fp32 accurate where the plain Gram form loses most digits."""
    g = torch.Generator().manual_seed(0)
    base = 0.6 + 0.05 * torch.rand(1, 64 * 64 * 3, generator=g, dtype=F64)
    spots = torch.zeros(64, 64 * 64 * 3, dtype=F64)
    idx = torch.randint(0, spots.shape[1], (64, 40), generator=g)
    spots.scatter_(1, idx, 0.02 * torch.rand(64, 40, generator=g, dtype=F64))
    x = (base + spots).reshape(64, 64, 64, 3)
    rows = x.reshape(64, -1)
    exact = torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    off = ~torch.eye(64, dtype=torch.bool)

    def rel_err(C: torch.Tensor) -> float:
        return float(((C.double() - exact).abs() / exact)[off].max())

    naive_rows = x.float().reshape(64, -1)
    sq = (naive_rows * naive_rows).sum(1)
    naive = sq[:, None] + sq[None, :] - 2 * naive_rows @ naive_rows.T
    assert rel_err(naive) > 0.1  # the hazard is real for this data
    assert rel_err(costs.pairwise_cost(x.float(), "sqeuclidean")) < 1e-4
    assert rel_err(costs.pairwise_cost(x.float(), "scaled_sqeuclidean") * exact.mean()) < 1e-4


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="unknown cost"):
        costs.pairwise_cost(_cloud(), "l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="floating"):
        costs.pairwise_cost(torch.zeros(4, 3, dtype=torch.uint8), "cosine")
