r"""Pairwise cost matrices :math:`C_{ij} = c(x_i, x_j)` of a mini-batch ``x: [n, ...]``, ``[n, n]``.

Each sample is flattened to a row (``[n, d]``, e.g. ``d = 64·64·3 = 12288`` for colour images).
The four costs of the GMG paper (Uscidda et al., ICLR 2025, §4: L2², ScL2², Cos; plus the plain
inner product):

* ``sqeuclidean``: :math:`\|x_i - x_j\|^2` (preserves distances).
* ``scaled_sqeuclidean``: :math:`\|x_i - x_j\|^2 / \overline{C}` with :math:`\overline{C}` the mean
  of the ``[n, n]`` matrix (diagonal included). The paper's exact scaling was not recovered; this
  is our reading: each side is divided by its own mean, so a map that preserves distances up to
  one global factor has zero cost difference. The scale stays differentiable, which makes the
  cost exactly invariant to ``x → s·x``.
* ``cosine``: :math:`\langle x_i, x_j\rangle / (\|x_i\| \|x_j\|)` (preserves angles). A zero row has
  zero similarity to everything.
* ``inner_product``: :math:`\langle x_i, x_j\rangle`.

Numerics. Squared distances use the Gram form :math:`|x_i|^2 + |x_j|^2 - 2\langle x_i,x_j\rangle`
on the *batch-centred* rows (distances are translation invariant). Without centring, fp32 loses
every digit on near-constant 12288-dim images (|x|² ≈ 6000 against distances ≈ 1). Centring is
optional (``center=True``) for ``cosine`` and ``inner_product``, where it changes the geometry
(angles about the batch mean instead of the origin). Every matrix is symmetrised; squared
distances are clamped at 0 with a zero diagonal.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

CostName = Literal["sqeuclidean", "scaled_sqeuclidean", "cosine", "inner_product"]
COST_NAMES: tuple[str, ...] = get_args(CostName)


def _rows(x: Tensor) -> Tensor:
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"expected a batch [n, ...] with n >= 1; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"costs need a floating tensor; got {x.dtype} (convert images first)")
    return x.reshape(x.shape[0], -1)


def _centered(x: Tensor) -> Tensor:
    return x - x.mean(0, keepdim=True)


class _Gram(torch.autograd.Function):
    r""":math:`G = X_c X_c^\top` with :math:`X_c = X - 1\bar x^\top` (``center``) or ``X``.

    The backward pass is :math:`dX = H (dG + dG^\top) X_c` with the centring matrix
    :math:`H = I - \tfrac1n 1 1^\top` (``I`` without ``center``), applied to the ``[n, n]``
    factor before the product: one matrix product instead of autograd's two, and no pass or
    ``[n, d]`` temporary for the mean's and the subtraction's backward (the ``[64, 12288]``
    image costs of a GMG step spend most of their time there). First-order only.
    """

    @staticmethod
    def forward(ctx, x: Tensor, center: bool) -> Tensor:  # noqa: ANN001
        xr = x - x.mean(0, keepdim=True) if center else x
        ctx.save_for_backward(xr)
        ctx.center = center
        return xr @ xr.T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dG: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        (xr,) = ctx.saved_tensors
        M = dG + dG.T
        if ctx.center:
            M = M - M.mean(0, keepdim=True)
        return M @ xr, None


def _gram(x: Tensor, center: bool) -> Tensor:
    """Gram matrix ``[n, n]`` of the rows ``x: [n, d]`` (batch-centred if ``center``)."""
    return _Gram.apply(x, center)


def _symmetric(C: Tensor) -> Tensor:
    return 0.5 * (C + C.transpose(0, 1))


def sqeuclidean(x: Tensor) -> Tensor:
    """:math:`C_{ij} = \\|x_i - x_j\\|^2` on centred rows; ``x: [n, ...]`` → ``[n, n]``."""
    G = _gram(_rows(x), True)
    sq = torch.diagonal(G)
    C = _symmetric(sq[:, None] + sq[None, :] - 2.0 * G).clamp(min=0)
    eye = torch.eye(C.shape[0], dtype=torch.bool, device=C.device)
    return C.masked_fill(eye, 0.0)


def _mean_scale(C: Tensor) -> Tensor:
    return C.mean().clamp(min=torch.finfo(C.dtype).tiny)


def scaled_sqeuclidean(x: Tensor) -> Tensor:
    """:math:`C_{ij} = \\|x_i - x_j\\|^2 / \\mathrm{mean}_{kl} \\|x_k - x_l\\|^2`, ``[n, n]``."""
    C = sqeuclidean(x)
    return C / _mean_scale(C)


def _unit_rows(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x, dim=1, eps=torch.finfo(x.dtype).tiny ** 0.5)


def cosine(x: Tensor, center: bool = False) -> Tensor:
    """:math:`C_{ij} = \\cos(x_i, x_j)` in ``[-1, 1]``; ``x: [n, ...]`` → ``[n, n]``.

    Normalised after the product, :math:`G_{ij} / \\sqrt{G_{ii} G_{jj}}` with :math:`G = X X^\\top`:
    as accurate as normalising the rows first (no cancellation), but the backward pass touches
    the ``[n, d]`` rows only through two matrix products instead of several elementwise passes.
    """
    G = _gram(_rows(x), center)
    norms = torch.diagonal(G).clamp(min=torch.finfo(G.dtype).tiny).sqrt()
    inv = torch.where(norms > torch.finfo(G.dtype).tiny ** 0.5, 1.0 / norms, 0.0)
    return _symmetric(G * inv[:, None] * inv[None, :]).clamp(-1.0, 1.0)


def inner_product(x: Tensor, center: bool = False) -> Tensor:
    """:math:`C_{ij} = \\langle x_i, x_j \\rangle`; ``x: [n, ...]`` → ``[n, n]``."""
    return _symmetric(_gram(_rows(x), center))


def pairwise_cost(x: Tensor, kind: CostName, *, center: bool = False) -> Tensor:
    """Cost matrix ``[n, n]`` of ``x: [n, ...]`` for ``kind`` in :data:`COST_NAMES`.

    ``center`` subtracts the batch mean first for ``cosine`` and ``inner_product``; the squared
    distances are always computed on centred rows, so it does not change them.
    """
    if kind == "sqeuclidean":
        return sqeuclidean(x)
    if kind == "scaled_sqeuclidean":
        return scaled_sqeuclidean(x)
    if kind == "cosine":
        return cosine(x, center)
    if kind == "inner_product":
        return inner_product(x, center)
    raise ValueError(f"unknown cost {kind!r}; expected one of {COST_NAMES}")


def cost_rank(x: Tensor, kind: CostName) -> int:
    """Rank of the factorisation :func:`pairwise_cost_factors` returns (d + 2 or d)."""
    d = _rows(x).shape[1]
    return d + 2 if kind in ("sqeuclidean", "scaled_sqeuclidean") else d


@torch.no_grad()
def pairwise_cost_factors(
    x: Tensor, kind: CostName, *, center: bool = False
) -> tuple[Tensor, Tensor]:
    """Factors ``A, B`` (``[n, r]``, detached) with ``pairwise_cost(x, kind) ≈ A Bᵀ``.

    Squared distances: :math:`A = [|x|^2, 1, -2x]`, :math:`B = [1, |x|^2, x]` on centred rows
    (rank d + 2, divided by the mean for ``scaled_sqeuclidean``); ``cosine`` and
    ``inner_product``: ``A = B`` = the (normalised) rows (rank d). They skip the clamp and the
    exact zero diagonal, so they serve the solver's linearisation, never the value of a cost.
    """
    xr = _rows(x)
    if kind in ("sqeuclidean", "scaled_sqeuclidean"):
        xc = _centered(xr)
        sq = (xc * xc).sum(1, keepdim=True)
        one = torch.ones_like(sq)
        A, B = torch.cat([sq, one, -2.0 * xc], 1), torch.cat([one, sq, xc], 1)
        if kind == "scaled_sqeuclidean":
            A = A / (2.0 * sq.mean()).clamp(min=torch.finfo(xc.dtype).tiny)
        return A, B
    if kind == "cosine":
        xn = _unit_rows(_centered(xr) if center else xr)
        return xn, xn
    if kind == "inner_product":
        xr = _centered(xr) if center else xr
        return xr, xr
    raise ValueError(f"unknown cost {kind!r}; expected one of {COST_NAMES}")
