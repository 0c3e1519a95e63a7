"""The ``gmg-sweep`` flow: a grid of DVC experiments run in parallel on Dask.

Every grid point becomes one Prefect task that runs ``dvc exp run`` in its own clone of the
repository (:mod:`pipelines.workspace`) and records the result as a DVC experiment of the
baseline commit, so ``dvc exp show`` and ``gmg results`` list it. Tasks run on a Dask cluster
through ``prefect-dask``: a ``LocalCluster`` started for the sweep, or an existing scheduler
(``address``) whose workers may sit on other machines (remote mode, see ``git_remote``). A
failing experiment is retried ``retries`` times, then reported; the others carry on.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.runtime import task_run

from pipelines.dvctools import dvc_argv, git, run_command
from pipelines.grid import Experiment, check_keys_exist, default_sweep_name, expand_grid
from pipelines.workspace import (
    SWEEPS_DIR,
    Baseline,
    prepare_baseline,
    remove_tree,
    run_experiment_in_clone,
)

__all__ = ["ExperimentFailed", "ExperimentOutcome", "dask_task_runner", "run_experiment", "sweep"]


@dataclass
class ExperimentOutcome:
    """How one experiment of a sweep ended."""

    name: str
    params: dict[str, Any]
    status: str  # "succeeded" or "failed"
    rev: str | None = None
    seconds: float | None = None
    attempts: int = 1
    error: str | None = None


class ExperimentFailed(RuntimeError):
    """An experiment attempt failed; the message holds the attempt number and DVC's output."""


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="{experiment.name}")
def run_experiment(experiment: Experiment, baseline: Baseline) -> ExperimentOutcome:
    """Run one grid point as a DVC experiment in an isolated clone."""
    logger = get_run_logger()
    attempt = task_run.run_count or 1
    logger.info("%s: %s (attempt %d)", experiment.name, " ".join(experiment.overrides()), attempt)
    start = time.perf_counter()
    try:
        rev = run_experiment_in_clone(experiment, baseline, on_line=logger.info)
    except Exception as err:
        raise ExperimentFailed(f"attempt {attempt}: {err}") from err
    return ExperimentOutcome(
        name=experiment.name, params=experiment.as_dict(), status="succeeded", rev=rev,
        seconds=round(time.perf_counter() - start, 3), attempts=attempt,
    )


@flow(name="gmg-sweep", persist_result=False)
def sweep(
    grid: dict[str, Any] | list[dict[str, Any]],
    root: str = ".",
    name: str | None = None,
    retries: int = 1,
    retry_delay_seconds: float = 0.0,
    git_remote: str | None = None,
    dvc_remote: str | None = None,
    only: list[str] | None = None,
    skip_existing: bool = False,
) -> list[dict[str, Any]]:
    """Run every experiment of ``grid`` (see :mod:`pipelines.grid`) on the flow's task runner.

    ``root`` is the repository on the machine that runs the flow. Without ``git_remote`` the
    workers must see ``root`` (a ``LocalCluster`` or a shared file system). With it (a remote
    name of ``root`` or a git URL), workers clone from that remote at the baseline commit,
    exchange outputs through the DVC remote ``dvc_remote`` (the default remote if None), and
    the flow pulls the finished experiments into ``root``.

    ``only`` runs just the named experiments of the grid (names as if the whole grid ran);
    ``skip_existing`` leaves out experiments that already exist instead of failing, so a
    killed sweep resumes where it stopped.

    Returns one :class:`ExperimentOutcome` (as a dict) per experiment run, in grid order.
    """
    logger = get_run_logger()
    repo = Path(root).resolve()
    sweep_name = name or default_sweep_name()
    experiments = expand_grid(grid, sweep_name)
    if only is not None:
        unknown = sorted(set(only) - {e.name for e in experiments})
        if unknown:
            raise ValueError(f"experiments {', '.join(unknown[:3])} are not in the grid")
        experiments = [e for e in experiments if e.name in set(only)]
    check_keys_exist(repo, experiments)
    if skip_existing:
        existing = _existing_names(repo)
        kept = [e for e in experiments if e.name not in existing]
        logger.info("sweep %s: %d of %d experiments exist already", sweep_name,
                    len(experiments) - len(kept), len(experiments))
        experiments = kept
    else:
        _check_names_free(repo, [e.name for e in experiments])
    if not experiments:
        return []
    baseline = prepare_baseline(repo, sweep_name, git_remote=git_remote, dvc_remote=dvc_remote)
    logger.info("sweep %s: %d experiments on %s", sweep_name, len(experiments), baseline.rev[:10])
    attempt = run_experiment.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)
    try:
        futures = [attempt.submit(e, baseline) for e in experiments]
        wait(futures)
        outcomes = [_outcome(e, f, retries) for e, f in zip(experiments, futures, strict=True)]
    finally:
        if baseline.local:
            remove_tree(repo / SWEEPS_DIR / sweep_name)
            with contextlib.suppress(OSError):  # only if no other sweep is running
                (repo / SWEEPS_DIR).rmdir()
    done = [o.name for o in outcomes if o.status == "succeeded"]
    if not baseline.local and done:
        pull = ["exp", "pull", "--force", *(["--remote", dvc_remote] if dvc_remote else [])]
        run_command(dvc_argv(*pull, baseline.source, *done), cwd=repo, on_line=logger.info,
                    what="dvc exp pull")
    failed = [o for o in outcomes if o.status == "failed"]
    for outcome in failed:
        logger.error("%s failed after %d attempts: %s", outcome.name, outcome.attempts,
                     outcome.error)
    logger.info("sweep %s: %d succeeded, %d failed", sweep_name, len(done), len(failed))
    _publish(sweep_name, outcomes)
    return [asdict(o) for o in outcomes]


def _outcome(experiment: Experiment, future: Any, retries: int) -> ExperimentOutcome:
    value = future.result(raise_on_failure=False)
    if isinstance(value, ExperimentOutcome):
        return value
    error = str(value) or future.state.message or future.state.name
    return ExperimentOutcome(
        name=experiment.name, params=experiment.as_dict(), status="failed",
        attempts=retries + 1, error=error,
    )


def _existing_names(repo: Path) -> set[str]:
    """Names of the repository's DVC experiments (of any baseline)."""
    return set(git("for-each-ref", "--format=%(refname:lstrip=4)", "refs/exps",
                   cwd=repo).splitlines())


def _check_names_free(repo: Path, names: list[str]) -> None:
    taken = sorted(_existing_names(repo) & set(names))
    if taken:
        raise ValueError(
            f"experiments {', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''} already "
            "exist: choose another sweep name or remove them with `dvc exp remove`"
        )


def _publish(sweep_name: str, outcomes: list[ExperimentOutcome]) -> None:
    rows = "\n".join(
        f"| {o.name} | {' '.join(f'{k}={v}' for k, v in o.params.items())} | {o.status} "
        f"| {o.attempts} | {(o.rev or '')[:10]} |"
        for o in outcomes
    )
    create_markdown_artifact(
        key="gmg-sweep",
        markdown=f"### {sweep_name}\n\n| experiment | params | status | attempts | commit |\n"
        f"|---|---|---|---|---|\n{rows}\n",
        description=f"Experiments of sweep {sweep_name}.",
    )


def dask_task_runner(
    workers: int = 2, address: str | None = None, processes: bool = False
) -> Any:
    """A ``DaskTaskRunner``: an existing scheduler at ``address``, else a new LocalCluster.

    The local cluster gets ``workers`` single-threaded workers. Each experiment runs in its own
    DVC subprocess, so thread workers (``processes=False``, the default) parallelise as well as
    process workers and start in a fraction of the time.
    """
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers, "threads_per_worker": 1, "processes": processes,
            "dashboard_address": None,
        }
    )
