r"""The geometry-preservation toy of the GMG paper (arXiv 2407.07829, Figure 2).

A map :math:`T: \mathbb{R}^3 \to \mathbb{R}^2` (a small MLP) pushes a 3-D Gaussian mixture
``p`` onto a 2-D target ``q`` (a uniform square or a ring). It is trained on

.. math::
    \mathcal{L}(T) = S_\varepsilon(T\sharp p_n, q_m) + \lambda\, R_{r_n}(T),
    \qquad R \in \{0, \mathrm{DST}, \mathrm{GMG}\},

where :math:`S_\varepsilon` is the debiased Sinkhorn divergence (Genevay, Peyré, Cuturi 2018;
Feydy et al. 2019, Eq. 3) with the squared Euclidean ground cost, and the regularizer comes from
:mod:`gmgcore.gap` with the reference :math:`r_n` a sub-batch of source points.

Contents: samplers (:func:`mixture_means`, :func:`sample_source`, :func:`sample_square`,
:func:`sample_ring`), the map (:func:`make_mlp`), entropic OT in the log domain
(:func:`entropic_ot`, :func:`sinkhorn_divergence`), a geometry metric
(:func:`knn_label_purity`) and the training loop (:func:`fit_map`). Shapes: source points
``[n, 3]``, mapped and target points ``[n, 2]``, cluster labels int64 ``[n]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "EntropicOT",
    "entropic_ot",
    "entropic_ot_self",
    "fit_map",
    "knn_label_purity",
    "make_mlp",
    "mixture_means",
    "sample_ring",
    "sample_source",
    "sample_square",
    "sinkhorn_divergence",
    "sqeuclidean",
]

Regularizer = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------- samplers
def mixture_means(n_clusters: int, radius: float, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Cluster centres spread over the sphere of ``radius`` in 3-D (a Fibonacci lattice).

    Point ``k`` has height :math:`z_k = 1 - (2k + 1)/K` and azimuth :math:`k\,\pi(3 - \sqrt 5)`,
    so the centres are deterministic and roughly equidistant. Returns ``[K, 3]``.
    """
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    k = torch.arange(n_clusters, dtype=dtype)
    z = 1.0 - (2.0 * k + 1.0) / n_clusters
    rho = torch.sqrt(1.0 - z**2)
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    return radius * torch.stack([rho * torch.cos(phi), rho * torch.sin(phi), z], dim=1)


def sample_source(
    n: int, means: Tensor, std: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    r"""Draw ``n`` points from the equal-weight mixture :math:`\frac1K\sum_k N(m_k, s^2 I_3)`.

    ``means`` is ``[K, 3]``. Returns points ``[n, 3]`` and their cluster labels int64 ``[n]``.
    """
    labels = torch.randint(len(means), (n,), generator=generator)
    noise = torch.randn(n, means.shape[1], generator=generator, dtype=means.dtype)
    return means[labels] + std * noise, labels


def sample_square(
    n: int, generator: torch.Generator, half_width: float = 1.0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Uniform samples on the square :math:`[-h, h]^2`. Returns ``[n, 2]``."""
    return half_width * (2.0 * torch.rand(n, 2, generator=generator, dtype=dtype) - 1.0)


def sample_ring(
    n: int,
    generator: torch.Generator,
    inner: float = 0.7,
    outer: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""Uniform samples (by area) on the annulus :math:`\{u : r_{in} \le \|u\| \le r_{out}\}`.

    Radius :math:`\rho = \sqrt{U(r_{in}^2, r_{out}^2)}`, angle :math:`U(0, 2\pi)`.
    Returns ``[n, 2]``.
    """
    if not 0.0 <= inner < outer:
        raise ValueError(f"ring radii must satisfy 0 <= inner < outer, got {inner}, {outer}")
    u = torch.rand(n, 2, generator=generator, dtype=dtype)
    rho = torch.sqrt(inner**2 + (outer**2 - inner**2) * u[:, 0])
    angle = 2.0 * math.pi * u[:, 1]
    return torch.stack([rho * torch.cos(angle), rho * torch.sin(angle)], dim=1)


# --------------------------------------------------------------------------------- the map
def make_mlp(
    in_dim: int, out_dim: int, hidden: int, depth: int, seed: int, dtype: torch.dtype
) -> nn.Sequential:
    """An MLP ``in_dim -> hidden (x depth, SiLU) -> out_dim`` with PyTorch's default init drawn
    from ``seed`` (the global RNG state is left untouched)."""
    layers: list[nn.Module] = []
    width = in_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden, dtype=dtype), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, out_dim, dtype=dtype))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------- entropic OT
def sqeuclidean(x: Tensor, y: Tensor) -> Tensor:
    r""":math:`C_{ij} = \|x_i - y_j\|_2^2` for ``x [n, d]``, ``y [m, d]``; returns ``[n, m]``.

    Gram form :math:`|x_i|^2 + |y_j|^2 - 2\langle x_i, y_j\rangle`, clamped at 0: cheap to
    differentiate, and accurate for the low-dimensional, unit-scale points of the toy (the
    cancellation error is about machine precision times :math:`|x|^2`)."""
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return sq.clamp(min=0.0)


def _softmin(c: Tensor, h: Tensor, epsilon: float, buf: Tensor) -> Tensor:
    r"""Row-wise :math:`\mathrm{LSE}_j(h_j - c_{ij}/\varepsilon)` for ``c [n, m]``, ``h [1, m]``;
    returns ``[n, 1]``.

    Works in place in ``buf`` (``[n, m]``) and clamps terms below ``max - 50`` (relative error
    under :math:`m e^{-50}`): this avoids allocating temporaries and producing subnormal
    ``exp`` outputs, each of which slows CPU Sinkhorn iterations several-fold."""
    torch.add(h, c, alpha=-1.0 / epsilon, out=buf)
    top = buf.amax(dim=1, keepdim=True)
    buf.sub_(top).clamp_(min=-50.0).exp_()
    return top + buf.sum(dim=1, keepdim=True).log_()


def _exp_plan(log_plan: Tensor) -> Tensor:
    """``exp`` with the exponent floored just above the smallest normal number of its dtype
    (entries of at most ~1e-38 in fp32 are raised to it: no subnormals, no exact zeros)."""
    floor = math.log(torch.finfo(log_plan.dtype).tiny) + 1.0
    return log_plan.clamp_(min=floor).exp_()


class EntropicOT(NamedTuple):
    r"""Solution of entropic OT between uniform empirical measures (see :func:`entropic_ot`).

    ``value`` is :math:`\mathrm{OT}_\varepsilon` (differentiable, envelope gradient);
    ``transport_cost`` is :math:`\langle P, C\rangle` (detached); ``plan`` ``[n, m]``;
    potentials ``f`` ``[n]``, ``g`` ``[m]`` (detached); ``iterations`` counts the Sinkhorn
    iterations at the final :math:`\varepsilon` (after the annealing)."""

    value: Tensor
    transport_cost: Tensor
    plan: Tensor
    f: Tensor
    g: Tensor
    iterations: int
    converged: bool


def entropic_ot(
    x: Tensor,
    y: Tensor,
    epsilon: float,
    max_iter: int = 1000,
    tol: float = 1e-6,
    scaling: float = 0.7,
    relaxation: float = 1.8,
) -> EntropicOT:
    r"""Entropic OT with squared Euclidean cost between :math:`\alpha = \frac1n\sum\delta_{x_i}`
    and :math:`\beta = \frac1m\sum\delta_{y_j}` by log-domain Sinkhorn (Peyré & Cuturi 2019,
    Rem. 4.23), ``x [n, d]``, ``y [m, d]``:

    .. math::
        \mathrm{OT}_\varepsilon = \min_{P \in U(a, b)} \langle P, C\rangle
            + \varepsilon\,\mathrm{KL}(P \,|\, a b^\top)
            = \langle a, f\rangle + \langle b, g\rangle,\qquad
        P_{ij} = a_i b_j\, e^{(f_i + g_j - C_{ij})/\varepsilon}.

    Alternates
    :math:`f_i \leftarrow -\varepsilon\,\mathrm{LSE}_j(\log b_j + (g_j - C_{ij})/\varepsilon)`
    and the same update of ``g``. :math:`\varepsilon` is first annealed from
    :math:`\max C` by factors ``scaling`` (Feydy et al. 2019, Sec. 3.3; ``scaling=0`` skips
    it); then iterations at ``epsilon``, over-relaxed as
    :math:`f \leftarrow (1 - \omega) f + \omega\,\mathrm{update}(g)` with
    :math:`\omega` = ``relaxation`` in (0, 2) (Thibault et al. 2021; 1 is plain Sinkhorn,
    about 1.8 needs ~10x fewer iterations here), run until the row marginals of ``P`` are
    within ``tol`` (mean relative error) or ``max_iter`` is reached. The potentials are
    computed without autograd; ``value`` carries the envelope gradient
    :math:`\partial\,\mathrm{OT}_\varepsilon / \partial C = P` through ``C(x, y)``.
    """
    if epsilon <= 0 or not 0 <= scaling < 1 or not 0 < relaxation < 2:
        raise ValueError(f"need epsilon > 0, 0 <= scaling < 1 and 0 < relaxation < 2; got "
                         f"{epsilon}, {scaling}, {relaxation}")
    n, m = len(x), len(y)
    cost = sqeuclidean(x, y)
    c = cost.detach()
    log_a, log_b = -math.log(n), -math.log(m)
    c_t = c.T.contiguous()
    buf, buf_t = torch.empty_like(c), torch.empty_like(c_t)
    f, g = torch.zeros(n, 1, dtype=c.dtype), torch.zeros(1, m, dtype=c.dtype)
    eps = max(float(c.max()), epsilon) if scaling > 0 else epsilon
    while True:  # annealing; its last pass is at epsilon
        f = -eps * _softmin(c, g / eps + log_b, eps, buf)
        g = -eps * _softmin(c_t, f.T / eps + log_a, eps, buf_t).T
        if eps <= epsilon:
            break
        eps = max(eps * scaling, epsilon)
    converged, it = False, 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        f_next = -epsilon * _softmin(c, g / epsilon + log_b, epsilon, buf)
        # the row marginals of P(f, g) are a_i exp((f_i - f_next_i) / eps)
        err = torch.expm1((f - f_next) / epsilon).abs().mean()
        if err < tol:
            f, converged = f_next, True
            break
        f = torch.lerp(f, f_next, relaxation)
        g_next = -epsilon * _softmin(c_t, f.T / epsilon + log_a, epsilon, buf_t).T
        g = torch.lerp(g, g_next, relaxation)
    plan = _exp_plan((f + g - c) / epsilon + (log_a + log_b))
    dual = f.mean() + g.mean()
    transport = (plan * c).sum()
    value = (plan * cost).sum() + (dual - transport)  # equals the dual, gradient P dC
    return EntropicOT(value, transport, plan, f.reshape(n), g.reshape(m), it, converged)


def entropic_ot_self(x: Tensor, epsilon: float, max_iter: int = 200, tol: float = 1e-6) -> Tensor:
    r""":math:`\mathrm{OT}_\varepsilon(\alpha, \alpha)` for
    :math:`\alpha = \frac1n\sum\delta_{x_i}`, ``x [n, d]``, by the symmetric averaged Sinkhorn
    update (Feydy et al. 2019, Sec. 3.1)

    .. math::
        f \leftarrow \tfrac12\big(f - \varepsilon\,\mathrm{LSE}_j(\log a_j
            + (f_j - C_{ij})/\varepsilon)\big),
        \qquad \mathrm{OT}_\varepsilon(\alpha, \alpha) = 2\langle a, f\rangle,

    which converges in tens of iterations where the plain alternation needs thousands. Stops
    when an update moves ``f`` by less than ``tol * epsilon``. Returns a differentiable scalar
    with the envelope gradient (the plan
    :math:`P_{ij} = a_i a_j e^{(f_i + f_j - C_{ij})/\varepsilon}` is held fixed).
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    n = len(x)
    cost = sqeuclidean(x, x)
    c = cost.detach()
    log_a = -math.log(n)
    buf = torch.empty_like(c)
    f = torch.zeros(n, 1, dtype=c.dtype)
    for _ in range(max_iter):
        step = 0.5 * (-epsilon * _softmin(c, f.T / epsilon + log_a, epsilon, buf) - f)
        f = f + step
        if step.abs().max() < tol * epsilon:
            break
    plan = _exp_plan((f + f.T - c) / epsilon + 2 * log_a)
    dual = 2.0 * f.mean()
    return (plan * cost).sum() + (dual - (plan * c).sum())


def sinkhorn_divergence(
    x: Tensor,
    y: Tensor,
    epsilon: float,
    max_iter: int = 1000,
    tol: float = 1e-6,
    scaling: float = 0.7,
) -> Tensor:
    r"""Debiased Sinkhorn divergence (Feydy et al. 2019, Eq. 3) with squared Euclidean cost:

    .. math::
        S_\varepsilon(\alpha, \beta) = \mathrm{OT}_\varepsilon(\alpha, \beta)
            - \tfrac12\mathrm{OT}_\varepsilon(\alpha, \alpha)
            - \tfrac12\mathrm{OT}_\varepsilon(\beta, \beta) \;\ge 0,

    zero iff the two empirical measures ``x [n, d]``, ``y [m, d]`` are equal. Returns a
    differentiable scalar (gradients flow to both ``x`` and ``y``). The cross term is solved by
    :func:`entropic_ot` (``max_iter``, ``tol``, ``scaling``), the self terms by
    :func:`entropic_ot_self`.
    """
    xy = entropic_ot(x, y, epsilon, max_iter, tol, scaling).value
    xx = entropic_ot_self(x, epsilon, max_iter, tol)
    yy = entropic_ot_self(y, epsilon, max_iter, tol)
    return xy - 0.5 * (xx + yy)


# --------------------------------------------------------------------------------- metrics
def knn_label_purity(points: Tensor, labels: Tensor, k: int) -> float:
    r"""Mean fraction of each point's ``k`` nearest neighbours (Euclidean, itself excluded) that
    share its label: 1 when clusters stay apart, about :math:`\sum_c \pi_c^2` when labels are
    scrambled. ``points`` ``[n, d]``, ``labels`` int ``[n]``, ``1 <= k < n``."""
    n = len(points)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} points, got {k}")
    dist = sqeuclidean(points.detach(), points.detach())
    dist.fill_diagonal_(float("inf"))
    neighbours = dist.topk(k, dim=1, largest=False).indices
    return (labels[neighbours] == labels[:, None]).double().mean().item()


# --------------------------------------------------------------------------------- training
def fit_map(
    model: nn.Module,
    sample_source_batch: Callable[[int], Tensor],
    sample_target_batch: Callable[[int], Tensor],
    regularizer: Regularizer | None,
    *,
    steps: int,
    batch_size: int,
    reg_batch_size: int,
    weight: float,
    lr: float,
    epsilon: float,
    sinkhorn_iters: int = 10,
    sinkhorn_tol: float = 1e-3,
    sinkhorn_scaling: float = 0.7,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    r"""Train ``model`` with Adam on
    :math:`S_\varepsilon(T\sharp p_n, q_m) + \lambda R(x_r, T(x_r))`.

    Each step draws ``batch_size`` fresh source points ``[n, 3]`` and target points ``[n, 2]``
    with ``sample_source_batch(n)`` and ``sample_target_batch(n)`` (fresh target points keep a
    fixed sample's own offset from ``q`` out of the map); the regularizer sees the first
    ``reg_batch_size`` source points and their images (``[n_r, 3]``, ``[n_r, 2]``).
    ``callback(step, terms)`` is called after each step; the per-step terms (``fit``, ``reg``,
    ``loss``) are also returned.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[dict[str, float]] = []
    for step in range(1, steps + 1):
        x = sample_source_batch(batch_size)
        target = sample_target_batch(batch_size).detach()
        y = model(x)
        cross = entropic_ot(y, target, epsilon, sinkhorn_iters, sinkhorn_tol, sinkhorn_scaling)
        fit = cross.value - 0.5 * entropic_ot_self(y, epsilon, 100, sinkhorn_tol)
        fit = fit - 0.5 * entropic_ot_self(target, epsilon, 100, sinkhorn_tol).detach()
        reg = torch.zeros((), dtype=fit.dtype)
        if regularizer is not None and weight > 0:
            reg = regularizer(x[:reg_batch_size], y[:reg_batch_size])
        loss = fit + weight * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        terms = {"fit": fit.item(), "reg": reg.item(), "loss": loss.item()}
        history.append(terms)
        if callback is not None:
            callback(step, terms)
    return history
