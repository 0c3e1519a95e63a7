"""Stage ``toy``: the geometry-preservation toy of the GMG paper (arXiv 2407.07829, Figure 2).

For each target (a uniform square with squared Euclidean costs, a ring with cosine costs) and
each regularizer (none, DST, GMG) an MLP maps a 3-D Gaussian mixture onto the target by
minimising a Sinkhorn divergence plus ``weight`` times the regularizer. Writes ``out/toy.png``
(rows: targets; columns: source, target, then the pushforward per regularizer, coloured by source
cluster) and ``out/metrics.json``: per target and regularizer, the fit to the target
(``sinkhorn_divergence`` on held-out samples) and the geometry kept (``knn_purity`` w.r.t. the
source clusters, ``distortion`` and ``gmg`` with that target's costs), plus reference values.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import matplotlib
import torch
import typer

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first

from gmgcore import toy  # noqa: E402
from gmgcore.gap import distortion, gromov_monge_gap  # noqa: E402
from stages.atomic import atomic_dir, write_json  # noqa: E402
from stages.params import StageConfig  # noqa: E402
from stages.progress import task_progress  # noqa: E402

__all__ = ["REGULARIZERS", "TARGETS", "ToyConfig", "register", "run"]

#: target name -> geometry cost used by DST and GMG on both sides (the paper's row labels).
TARGETS: dict[str, str] = {"square": "sqeuclidean", "ring": "cosine"}
REGULARIZERS: tuple[str, ...] = ("none", "dst", "gmg")
DTYPE = torch.float32


class ToyConfig(StageConfig):
    """Parameters of the toy (section ``toy`` of ``params.yaml``)."""

    seed: int = 0
    n_clusters: int = 5  # source mixture components, centres on a sphere
    cluster_radius: float = 1.0  # distance of the centres from the origin
    cluster_std: float = 0.15
    square_half_width: float = 1.0
    ring_inner: float = 0.7
    ring_outer: float = 1.0
    hidden: int = 64  # MLP width
    depth: int = 3  # hidden layers
    steps: int = 600
    batch_size: int = 256  # fresh source and target points per step for the fitting loss
    reg_batch_size: int = 64  # reference points r_n per step for DST / GMG
    lr: float = 3e-3
    epsilon: float = 0.01  # entropic blur of the fitting Sinkhorn divergence (squared units)
    epsilon0: float = 0.01  # GMG: relative entropic regularization of the GW solve
    gmg_max_iter: int = 30  # GMG training budget: outer (mirror-descent) steps
    gmg_inner_iterations: int = 20  # ... and Sinkhorn iterations per outer step
    weight_square: float = 1.0  # lambda for the square row (sqeuclidean costs)
    weight_ring: float = 1.0  # lambda for the ring row (cosine costs)
    eval_size: int = 1000  # held-out points for the Sinkhorn divergence, purity, distortion
    eval_gmg_batches: int = 8  # held-out batches of reg_batch_size points for the GMG value
    knn: int = 10
    threads: int = 1  # torch CPU threads; the tensors are small


def _target_sampler(cfg: ToyConfig, name: str):
    if name == "square":
        return lambda n, gen: toy.sample_square(n, gen, cfg.square_half_width, DTYPE)
    return lambda n, gen: toy.sample_ring(n, gen, cfg.ring_inner, cfg.ring_outer, DTYPE)


def _check(cfg: ToyConfig) -> None:
    for key in ("steps", "batch_size", "reg_batch_size", "eval_size", "hidden"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"toy.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.reg_batch_size > cfg.batch_size:
        raise ValueError(f"toy.reg_batch_size ({cfg.reg_batch_size}) exceeds toy.batch_size")
    if not 1 <= cfg.knn < cfg.eval_size:
        raise ValueError(f"toy.knn must be in [1, eval_size), got {cfg.knn}")
    if cfg.eval_gmg_batches * cfg.reg_batch_size > cfg.eval_size:
        raise ValueError("toy.eval_gmg_batches * toy.reg_batch_size exceeds toy.eval_size")


def _regularizer(cfg: ToyConfig, name: str, cost: str) -> toy.Regularizer | None:
    if name == "dst":
        return lambda x, y: distortion(x, y, cost, cost)
    if name == "gmg":
        budget = {"max_iter": cfg.gmg_max_iter, "inner_iterations": cfg.gmg_inner_iterations,
                  "max_inner": cfg.gmg_inner_iterations}
        return lambda x, y: _gap(cfg, cost, x, y, **budget).to(y.dtype)
    return None


def _gap(cfg: ToyConfig, cost: str, x: torch.Tensor, y: torch.Tensor, **budget: Any):
    """GMG value in float64: at small ``epsilon0`` the fp32 GW solve can stall at the product
    coupling; the 64-point problems cost little either way."""
    return gromov_monge_gap(x.double(), y.double(), cost, cost, cfg.epsilon0, **budget).value


def _evaluate(cfg: ToyConfig, cost: str, x, labels, y, target_eval) -> dict[str, float]:
    """Fit and geometry of one trained map on the held-out sample (``x [N, 3]``, ``y [N, 2]``).

    ``gmg`` is the mean over ``eval_gmg_batches`` disjoint batches of ``reg_batch_size`` points
    (the GMG estimate depends on the batch size), each with a GW budget of 100 x 20 Sinkhorn
    iterations (a 1e-6 tolerance costs up to 100x more and moved the values by < 0.002)."""
    n = cfg.reg_batch_size
    with torch.no_grad():
        gaps = [
            _gap(cfg, cost, x[k * n:(k + 1) * n], y[k * n:(k + 1) * n], max_iter=100,
                 inner_iterations=20, max_inner=20).item()
            for k in range(cfg.eval_gmg_batches)
        ]
        return {
            "sinkhorn_divergence": _divergence(y, target_eval, cfg.epsilon),
            "knn_purity": toy.knn_label_purity(y, labels, cfg.knn),
            "distortion": distortion(x, y, cost, cost).item(),
            "gmg": sum(gaps) / len(gaps),
        }


def _divergence(x: torch.Tensor, y: torch.Tensor, epsilon: float) -> float:
    """Held-out fit: a Sinkhorn divergence solved to a 1e-5 marginal error (on these data its
    value then agrees with a 1e-9 fp64 solve to ~1e-8)."""
    return toy.sinkhorn_divergence(x, y, epsilon, max_iter=2000, tol=1e-5).item()


def _round(value: Any) -> Any:
    """Six significant digits: the JSON compares equal across platforms' last-bit noise."""
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return float(f"{value:.6g}")


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(cfg: ToyConfig, out: Path) -> dict[str, Any]:
    """Train the 2 x 3 maps, write ``out/toy.png`` and ``out/metrics.json``; return the metrics."""
    _check(cfg)
    out = Path(out)
    means = toy.mixture_means(cfg.n_clusters, cfg.cluster_radius, DTYPE)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 10_000)
    x_eval, labels_eval = toy.sample_source(cfg.eval_size, means, cfg.cluster_std, eval_gen)
    shares = torch.bincount(labels_eval, minlength=cfg.n_clusters).double() / cfg.eval_size
    metrics: dict[str, Any] = {"reference": {
        "source_knn_purity": toy.knn_label_purity(x_eval, labels_eval, cfg.knn),
        "chance_knn_purity": shares.square().sum().item(),
    }}
    panels: dict[str, dict[str, torch.Tensor]] = {}
    total = len(TARGETS) * len(REGULARIZERS) * cfg.steps
    with _threads(cfg.threads), task_progress("toy", total) as advance:
        for row, (target_name, cost) in enumerate(TARGETS.items()):
            sample_target = _target_sampler(cfg, target_name)
            target_eval = sample_target(cfg.eval_size, eval_gen)
            metrics["reference"][target_name] = {  # two held-out samples of q: the noise floor
                "sinkhorn_divergence": _divergence(
                    sample_target(cfg.eval_size, eval_gen), target_eval, cfg.epsilon)}
            weight = cfg.weight_square if target_name == "square" else cfg.weight_ring
            panels[target_name] = {"target": target_eval}
            metrics[target_name] = {}
            for reg_name in REGULARIZERS:
                model = toy.make_mlp(3, 2, cfg.hidden, cfg.depth, cfg.seed + row, DTYPE)
                batch_gen = torch.Generator().manual_seed(cfg.seed + 1_000 + row)
                toy.fit_map(
                    model,
                    lambda n, g=batch_gen: toy.sample_source(n, means, cfg.cluster_std, g)[0],
                    lambda n, g=batch_gen, draw=sample_target: draw(n, g),
                    _regularizer(cfg, reg_name, cost),
                    steps=cfg.steps, batch_size=cfg.batch_size,
                    reg_batch_size=cfg.reg_batch_size, weight=weight, lr=cfg.lr,
                    epsilon=cfg.epsilon, callback=lambda step, terms: advance(1, **terms),
                )
                with torch.no_grad():
                    y_eval = model(x_eval)
                metrics[target_name][reg_name] = _evaluate(
                    cfg, cost, x_eval, labels_eval, y_eval, target_eval)
                panels[target_name][reg_name] = y_eval
    metrics = _round(metrics)
    with atomic_dir(out) as tmp:
        (tmp / "toy.png").write_bytes(_figure(x_eval, labels_eval, panels, metrics))
        write_json(tmp / "metrics.json", metrics)
    return metrics


_TITLES = {"none": "no regularizer", "dst": "DST", "gmg": "GMG"}
_COST_LABEL = {"sqeuclidean": "L2²", "cosine": "cos"}


def _figure(x, labels, panels, metrics) -> bytes:
    """Rows: targets; columns: source (3-D), target, T#p per regularizer. Returns PNG bytes."""
    n_cols = 2 + len(REGULARIZERS)
    fig = plt.figure(figsize=(3.0 * n_cols, 3.0 * len(TARGETS)))
    colours = plt.get_cmap("tab10")(labels.numpy() % 10)
    for row, (target_name, cost) in enumerate(TARGETS.items()):
        base = row * n_cols
        ax = fig.add_subplot(len(TARGETS), n_cols, base + 1, projection="3d")
        ax.scatter(*x.numpy().T, c=colours, s=2, depthshade=False)
        ax.view_init(elev=45, azim=200)  # all five clusters apart for the default layout
        ax.set_title("source p (3-D)", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
        ax = fig.add_subplot(len(TARGETS), n_cols, base + 2)
        ax.scatter(*panels[target_name]["target"].numpy().T, s=2, c="0.4")
        ax.set_title(f"target q: {target_name}", fontsize=9)
        for col, reg in enumerate(REGULARIZERS):
            ax = fig.add_subplot(len(TARGETS), n_cols, base + 3 + col)
            ax.scatter(*panels[target_name][reg].numpy().T, c=colours, s=2)
            m = metrics[target_name][reg]
            label = _TITLES[reg] + ("" if reg == "none" else f" ({_COST_LABEL[cost]})")
            ax.set_title(
                f"{label}\nS={m['sinkhorn_divergence']:.3g}  kNN={m['knn_purity']:.2f}",
                fontsize=9,
            )
        for ax in fig.axes[base + 1:]:
            ax.set_aspect("equal", adjustable="datalim")
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def register(app: typer.Typer) -> None:
    """Add the ``gmg toy`` command to the CLI ``app`` (called by :mod:`gmg.cli`)."""

    @app.command("toy")
    def toy_command(
        out: Annotated[Path, typer.Option(help="Output folder (toy.png, metrics.json).")] = Path(
            "plots/toy"
        ),
        params: Annotated[Path, typer.Option("--params", help="Params YAML file.")] = Path(
            "params.yaml"
        ),
        set_: Annotated[
            list[str] | None,
            typer.Option("--set", help="Override a param: section.key=value (repeatable)."),
        ] = None,
        debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    ) -> None:
        """Geometry-preservation toy (paper Figure 2): none vs DST vs GMG on 2-D targets."""
        from gmg.cli import run_stage

        run_stage("toy", "ToyConfig", params, set_, debug, lambda m, cfg: m.run(cfg, out=out))

