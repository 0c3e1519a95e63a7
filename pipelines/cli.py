"""``gmg run``, ``gmg sweep``, ``gmg study``, ``gmg serve`` and ``gmg results``.

:func:`register` adds the commands to the ``gmg`` typer app. Prefect, Dask and pandas are
imported inside the commands, so ``gmg --help`` and the stage commands stay fast.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.grid import (
    Grid,
    GridError,
    check_keys_exist,
    default_sweep_name,
    expand_grid,
    load_grid_file,
    parse_grid_options,
)

__all__ = ["register"]

RootOpt = Annotated[
    Path, typer.Option("--root", help="Repository root (holds dvc.yaml).", show_default=True)
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]


def _telemetry_off() -> None:
    """Project defaults for subprocesses and Prefect, set before Prefect is imported."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _last_line(text: str | None, limit: int = 120) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def run_command(
    root: RootOpt = Path("."),
    retries: Annotated[int, typer.Option(help="Extra attempts per failing stage.")] = 0,
    debug: DebugOpt = False,
) -> None:
    """Run the pipeline flow: one Prefect task per DVC stage (`dvc repro --single-item`)."""
    _telemetry_off()
    from rich.console import Console
    from rich.table import Table

    from pipelines.pipeline import pipeline

    try:
        statuses = pipeline(root=str(root), retries=retries)
    except Exception as err:  # noqa: BLE001 - the CLI boundary turns errors into one line
        if debug:
            raise
        _fail(f"{type(err).__name__}: {err}", 1)
    table = Table("stage", "status")
    for stage, status in statuses.items():
        table.add_row(stage, status)
    Console().print(table)


def sweep_command(
    grid_file: Annotated[
        Path | None, typer.Option("--grid", help="YAML file with `grid:` (and `name:`).")
    ] = None,
    vary: Annotated[
        list[str] | None,
        typer.Option("--vary", help="A grid axis: section.key=v1,v2,... (repeatable)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Experiment name prefix (default: sweep-<time>).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Workers of the local Dask cluster.")] = 2,
    address: Annotated[
        str | None, typer.Option(help="Existing Dask scheduler, e.g. tcp://10.0.0.5:8786.")
    ] = None,
    processes: Annotated[
        bool, typer.Option("--processes/--threads", help="Local cluster worker kind.")
    ] = False,
    retries: Annotated[int, typer.Option(help="Extra attempts per failing experiment.")] = 1,
    retry_delay: Annotated[float, typer.Option(help="Seconds between attempts.")] = 0.0,
    git_remote: Annotated[
        str | None, typer.Option(help="Remote mode: git remote (name or URL) workers clone.")
    ] = None,
    dvc_remote: Annotated[
        str | None, typer.Option(help="Remote mode: DVC remote for outputs (default remote).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Also write this sweep's results (.parquet or .csv).")
    ] = None,
    root: RootOpt = Path("."),
    debug: DebugOpt = False,
) -> None:
    """Run a grid of DVC experiments in parallel on Dask; list them with `gmg results`."""
    _telemetry_off()
    try:
        grid, file_name = _combined_grid(grid_file, vary or [])
        sweep_name = name or file_name or default_sweep_name()
        check_keys_exist(root, expand_grid(grid, sweep_name))  # fail before Prefect starts
    except GridError as err:
        _fail(str(err), 2)

    from pipelines.sweep import dask_task_runner, sweep

    logging.getLogger("distributed").setLevel(logging.WARNING)  # cluster chatter
    runner = dask_task_runner(workers=workers, address=address, processes=processes)
    try:
        outcomes = sweep.with_options(task_runner=runner)(
            grid=grid, root=str(root), name=sweep_name, retries=retries,
            retry_delay_seconds=retry_delay, git_remote=git_remote, dvc_remote=dvc_remote,
        )
    except Exception as err:  # noqa: BLE001
        if debug:
            raise
        _fail(f"{type(err).__name__}: {err}", 2 if isinstance(err, GridError) else 1)
    _print_outcomes(outcomes)
    if output is not None:
        from pipelines.results import collect_results, write_results

        write_results(collect_results(root, prefix=f"{sweep_name}-"), output)
        typer.echo(f"results written to {output}")
    failed = [o["name"] for o in outcomes if o["status"] != "succeeded"]
    if failed:
        _fail(f"{len(failed)} of {len(outcomes)} experiments failed: {', '.join(failed)}", 1)


def _combined_grid(grid_file: Path | None, vary: list[str]) -> tuple[Grid, str | None]:
    """The file's grid (or grids), each extended by the ``--vary`` axes, and its name."""
    axes = parse_grid_options(vary)
    if grid_file is None:
        if not axes:
            raise GridError("give a grid: --grid FILE and/or --vary section.key=v1,v2,...")
        return axes, None
    grid, name = load_grid_file(grid_file)
    if isinstance(grid, dict):
        return {**grid, **axes}, name
    return [{**g, **axes} for g in grid], name


def _print_outcomes(outcomes: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("experiment", "params", "status", "attempts", "seconds", "commit / error")
    for o in outcomes:
        params = " ".join(f"{k}={v}" for k, v in o["params"].items())
        detail = (o["rev"] or "")[:10] if o["status"] == "succeeded" else _last_line(o["error"])
        seconds = "" if o["seconds"] is None else f"{o['seconds']:.1f}"
        table.add_row(o["name"], params, o["status"], str(o["attempts"]), seconds, detail)
    Console().print(table)


def study_command(
    profile: Annotated[str, typer.Option(help="Budget profile of the study file: cpu, paper, ...")],
    study_file: Annotated[Path, typer.Option("--study", help="Study file.")] = Path(
        "studies/disentanglement.yaml"
    ),
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            help="Run only experiments with section.key in v1,v2,... (repeatable), "
            "e.g. train.seed=0,1.",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Workers of the local Dask cluster.")] = 2,
    address: Annotated[
        str | None, typer.Option(help="Existing Dask scheduler, e.g. tcp://10.0.0.5:8786.")
    ] = None,
    retries: Annotated[int, typer.Option(help="Extra attempts per failing experiment.")] = 1,
    table: Annotated[
        Path, typer.Option(help="Results table: <table>.parquet and <table>.md.")
    ] = Path("docs/study/table"),
    table_only: Annotated[
        bool, typer.Option("--table-only", help="Only rebuild the table from finished runs.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the selected experiments; run nothing.")
    ] = False,
    root: RootOpt = Path("."),
    debug: DebugOpt = False,
) -> None:
    """Run a named study (a grid with a budget profile) on the sweep flow; write its table."""
    _telemetry_off()
    from pipelines.study import (
        load_study,
        select_experiments,
        study_experiments,
        study_grid,
        study_name,
    )

    try:
        study = load_study(root / study_file if not study_file.is_absolute() else study_file)
        everything = study_experiments(study, profile)
        chosen = select_experiments(everything, parse_grid_options(where or []))
        check_keys_exist(root, chosen)
    except GridError as err:
        _fail(str(err), 2)
    typer.echo(f"study {study.name}, profile {profile}: {len(chosen)} of {len(everything)} "
               "experiments selected")
    if dry_run:
        for experiment in chosen:
            typer.echo(f"{experiment.name}  {' '.join(experiment.overrides())}")
        return
    if not table_only and chosen:
        from pipelines.sweep import dask_task_runner, sweep

        logging.getLogger("distributed").setLevel(logging.WARNING)
        runner = dask_task_runner(workers=workers, address=address)
        try:
            outcomes = sweep.with_options(task_runner=runner)(
                grid=study_grid(study, profile), root=str(root), name=study_name(study, profile),
                retries=retries,
                only=[e.name for e in chosen], skip_existing=True,
            )
        except Exception as err:  # noqa: BLE001
            if debug:
                raise
            _fail(f"{type(err).__name__}: {err}", 1)
    else:
        outcomes = []
    if outcomes:
        _print_outcomes(outcomes)
    failed = [o["name"] for o in outcomes if o["status"] != "succeeded"]
    try:
        written = _write_study_table(root, study, profile, everything, table)
        typer.echo(f"{written} configurations written to {table}.parquet and {table}.md")
    except Exception as err:  # noqa: BLE001
        if debug:
            raise
        if not failed:
            _fail(f"{type(err).__name__}: {err}", 1)
        typer.secho(f"no table: {err}", fg=typer.colors.YELLOW, err=True)
    if failed:
        _fail(f"{len(failed)} of {len(outcomes)} experiments failed: {', '.join(failed)}", 1)


def _write_study_table(
    root: Path, study: Any, profile: str, experiments: list[Any], table: Path
) -> int:
    """Aggregate the study's finished experiments (of any baseline commit) into the table."""
    from pipelines.results import collect_results, write_results
    from pipelines.study import study_name, study_table, table_markdown
    from stages.atomic import write_text

    prefix = f"{study_name(study, profile)}-"
    results = collect_results(root, all_commits=True, prefix=prefix)
    summary = study_table(study, experiments, results)
    results = results[results["experiment"].isin({e.name for e in experiments})]
    table.parent.mkdir(parents=True, exist_ok=True)
    write_results(summary, table.with_suffix(".parquet"))
    from pipelines.dvctools import git

    baselines = ", ".join(sorted({git("rev-parse", "--short=10", f"{rev}^{{commit}}", cwd=root)
                                  for rev in set(results["baseline"].astype(str))}))
    write_text(table.with_suffix(".md"), (
        f"{len(results)} experiments `{prefix}*` (baseline commits: {baselines}); mean ± sample "
        "std over seeds.\n\n" + table_markdown(summary)))
    return len(summary)


def serve_command(
    cron: Annotated[str, typer.Option(help='Cron schedule, e.g. "0 3 * * *".')],
    name: Annotated[str, typer.Option(help="Deployment name.")] = "gmg-pipeline-schedule",
    timezone: Annotated[
        str | None, typer.Option(help="IANA time zone of the schedule (default UTC).")
    ] = None,
    retries: Annotated[int, typer.Option(help="Extra attempts per failing stage.")] = 0,
    root: RootOpt = Path("."),
    debug: DebugOpt = False,
) -> None:
    """Serve the pipeline flow on a cron schedule (needs `prefect server start`)."""
    _telemetry_off()
    from pipelines.schedule import serve_pipeline

    try:
        serve_pipeline(root, cron, name=name, timezone=timezone, retries=retries)
    except Exception as err:  # noqa: BLE001
        if debug:
            raise
        _fail(f"{type(err).__name__}: {err}", 1)


def results_command(
    output: Annotated[
        Path | None, typer.Option(help="Write the table to a .parquet or .csv file.")
    ] = None,
    sweep: Annotated[
        str | None, typer.Option(help="Only experiments whose name starts with this.")
    ] = None,
    all_commits: Annotated[
        bool, typer.Option("--all-commits", "-A", help="Experiments of every commit.")
    ] = False,
    all_params: Annotated[
        bool, typer.Option("--all-params", help="Print every param, not only varying ones.")
    ] = False,
    metric: Annotated[
        list[str] | None,
        typer.Option(help="Print only metrics matching this pattern, e.g. 'dci.*' (repeatable)."),
    ] = None,
    root: RootOpt = Path("."),
    debug: DebugOpt = False,
) -> None:
    """One row per DVC experiment with its params and metrics (as `dvc exp show`)."""
    _telemetry_off()
    from pipelines.results import collect_results, varying_params, write_results

    try:
        df = collect_results(root, all_commits=all_commits, prefix=sweep)
        if output is not None:
            write_results(df, output)
    except Exception as err:  # noqa: BLE001
        if debug:
            raise
        _fail(f"{type(err).__name__}: {err}", 1)
    metrics = [m for m in df.attrs["metrics"]
               if not metric or any(fnmatch.fnmatchcase(m, p) for p in metric)]
    _print_results(df, df.attrs["params"] if all_params else varying_params(df), metrics)
    if output is not None:
        typer.echo(f"{len(df)} experiments written to {output}")


def _print_results(df: Any, params: list[str], metrics: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = ["experiment", *params, *metrics]
    table = Table(title=f"{len(df)} experiments")
    width = max([len("experiment"), *(len(str(n)) for n in df["experiment"])])
    table.add_column("experiment", no_wrap=True, min_width=width)
    for column in columns[1:]:
        table.add_column(column)
    for _, row in df[columns].iterrows():
        table.add_row(*(_cell(v) for v in row))
    Console().print(table)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def register(app: typer.Typer) -> None:
    """Add ``run``, ``sweep``, ``study``, ``serve`` and ``results`` to ``app``."""
    app.command("run")(run_command)
    app.command("sweep")(sweep_command)
    app.command("serve")(serve_command)
    app.command("results")(results_command)
    app.command("study")(study_command)
