"""The ``gmg`` command line: one command per DVC stage, plus flows and experiments.

Each stage command reads its own section of ``params.yaml`` (``--params`` for another file),
applies ``--set section.key=value`` overrides, validates into the stage's frozen config and
calls the stage's ``run``. Bad params exit with code 2 before any artifact is touched; other
errors print one line (the traceback with ``--debug``) and exit with code 1.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from stages.allocator import keep_freed_memory
from stages.params import ParamsError, load_section, parse_overrides

app = typer.Typer(
    help="Geometry-preserving disentangled representation learning with the Gromov-Monge gap.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", help="Params YAML file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a param: section.key=value (repeatable)."),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="Torch device: auto (cuda if available), cpu, cuda, cuda:1.")
]


def _device(name: str) -> str | None:
    return None if name == "auto" else name


def _fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def run_stage(
    section: str,
    config_cls: str,
    params: Path,
    overrides: list[str] | None,
    debug: bool,
    call: Callable[[Any, Any], Any],
) -> Any:
    """Load ``section`` into ``stages.<section>.<config_cls>`` and call ``call(module, cfg)``."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)
    keep_freed_memory()
    module = importlib.import_module(f"stages.{section}")
    try:
        overrides_map = parse_overrides(overrides or [])
        cfg = load_section(params, section, getattr(module, config_cls), overrides_map)
    except ParamsError as err:
        _fail(str(err), 2)
    try:
        return call(module, cfg)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as err:  # noqa: BLE001 - the CLI boundary turns errors into one line
        if debug:
            raise
        _fail(f"{type(err).__name__}: {err}", 1)


@app.command()
def prepare(
    out: Annotated[Path, typer.Option(help="Output dataset folder.")] = Path("data/dataset"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Render or read a ground-truth data set and write it as a Parquet store."""
    run_stage("prepare", "PrepareConfig", params, set_, debug, lambda m, cfg: m.run(cfg, out=out))


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Dataset folder.")] = Path("data/dataset"),
    out: Annotated[Path, typer.Option(help="Trained model file.")] = Path("models/model.pt"),
    log: Annotated[Path, typer.Option(help="Per-step loss log (CSV).")] = Path(
        "plots/train_log.csv"
    ),
    metrics: Annotated[Path, typer.Option(help="Final training terms (JSON).")] = Path(
        "metrics/train.json"
    ),
    checkpoints: Annotated[Path, typer.Option(help="Checkpoint folder.")] = Path(
        "runs/checkpoints"
    ),
    device: DeviceOpt = "auto",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Train a VAE-family model with an optional geometry regularizer (GMG, DST, Jacobian)."""
    run_stage(
        "train", "TrainConfig", params, set_, debug,
        lambda m, cfg: m.run(
            cfg, data=data, out=out, log=log, metrics=metrics, checkpoints=checkpoints,
            device=_device(device),
        ),
    )


@app.command()
def embed(
    data: Annotated[Path, typer.Option(help="Dataset folder.")] = Path("data/dataset"),
    model: Annotated[Path, typer.Option(help="Trained model file.")] = Path("models/model.pt"),
    out: Annotated[Path, typer.Option(help="Embeddings (Parquet).")] = Path(
        "data/embeddings.parquet"
    ),
    device: DeviceOpt = "auto",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Encode the data set and write code means, log-variances and factor classes."""
    run_stage(
        "embed", "EmbedConfig", params, set_, debug,
        lambda m, cfg: m.run(cfg, data=data, model=model, out=out, device=_device(device)),
    )


@app.command()
def evaluate(
    embeddings: Annotated[Path, typer.Option(help="Embeddings (Parquet).")] = Path(
        "data/embeddings.parquet"
    ),
    data: Annotated[Path, typer.Option(help="Dataset folder.")] = Path("data/dataset"),
    model: Annotated[Path, typer.Option(help="Trained model file.")] = Path("models/model.pt"),
    metrics_out: Annotated[Path, typer.Option("--metrics", help="Metrics JSON.")] = Path(
        "metrics/metrics.json"
    ),
    importance: Annotated[Path, typer.Option(help="DCI importance matrix (Parquet).")] = Path(
        "metrics/dci_importance.parquet"
    ),
    device: DeviceOpt = "auto",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Compute the disentanglement metrics selected in params and write metrics JSON."""
    run_stage(
        "evaluate", "EvaluateConfig", params, set_, debug,
        lambda m, cfg: m.run(
            cfg, embeddings=embeddings, data=data, model=model, metrics_out=metrics_out,
            importance_out=importance, device=_device(device),
        ),
    )


@app.command()
def report(
    data: Annotated[Path, typer.Option(help="Dataset folder.")] = Path("data/dataset"),
    model: Annotated[Path, typer.Option(help="Trained model file.")] = Path("models/model.pt"),
    log: Annotated[Path, typer.Option(help="Per-step loss log (CSV).")] = Path(
        "plots/train_log.csv"
    ),
    metrics: Annotated[Path, typer.Option(help="Metrics JSON.")] = Path("metrics/metrics.json"),
    importance: Annotated[Path, typer.Option(help="DCI importance (Parquet).")] = Path(
        "metrics/dci_importance.parquet"
    ),
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("reports"),
    html: Annotated[
        bool | None, typer.Option("--html/--no-html", help="Also write a self-contained HTML page.")
    ] = None,
    device: DeviceOpt = "auto",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Write traversals, reconstructions, curves, the importance heatmap and a metrics table."""
    overrides = list(set_ or [])
    if html is not None:
        overrides.append(f"report.html={'true' if html else 'false'}")
    run_stage(
        "report", "ReportConfig", params, overrides, debug,
        lambda m, cfg: m.run(
            cfg, data=data, model=model, log=log, metrics=metrics, importance=importance,
            out=out, device=_device(device), params_file=params,
        ),
    )


def _register_extensions() -> None:
    from pipelines.cli import register as register_flows
    from stages.toy import register as register_toy

    register_flows(app)
    register_toy(app)


_register_extensions()


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="gmg")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
