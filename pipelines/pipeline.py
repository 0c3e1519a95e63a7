"""The ``gmg-pipeline`` flow: one Prefect task per DVC stage, in DAG order.

Each task runs ``dvc repro --single-item <stage>``, so ``dvc.lock`` and the DVC cache alone
decide whether a stage runs; Prefect adds ordering, logs, retries, schedules and the UI, and
caches nothing itself (``cache_policy=NO_CACHE``). After a run ``dvc status`` is clean and a
plain ``dvc repro`` has nothing to do, and the other way round.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.dvctools import StageStatus, dvc_argv, pipeline_stages, repro_status, run_command

__all__ = ["PipelineFailed", "pipeline", "run_stage"]


class PipelineFailed(RuntimeError):
    """A stage failed; the message names it and lists what happened to every stage."""


@task(cache_policy=NO_CACHE, persist_result=False)
def run_stage(root: str, stage: str) -> StageStatus:
    """Bring one stage up to date with ``dvc repro --single-item`` and say what DVC did."""
    logger = get_run_logger()
    result = run_command(
        dvc_argv("repro", "--single-item", stage),
        cwd=Path(root),
        on_line=logger.info,
        what=f"dvc repro --single-item {stage}",
    )
    status = repro_status(stage, result.output)
    logger.info("stage %s: %s", stage, status.value)
    return status


@flow(name="gmg-pipeline", persist_result=False, validate_parameters=True)
def pipeline(root: str = ".", retries: int = 0, retry_delay_seconds: float = 10.0) -> dict:
    """Run every DVC stage of the repository at ``root`` in DAG order.

    Returns ``{stage: "ran" | "restored" | "skipped"}`` in execution order. A failing stage
    (after ``retries`` further attempts) stops the flow with :class:`PipelineFailed`; the stages
    below it are not started.
    """
    logger = get_run_logger()
    repo = Path(root).resolve()
    stages = pipeline_stages(repo)
    statuses: dict[str, str] = {}
    for i, stage in enumerate(stages):
        stage_task = run_stage.with_options(
            name=stage, task_run_name=stage, retries=retries,
            retry_delay_seconds=retry_delay_seconds,
        )
        try:
            statuses[stage] = stage_task(str(repo), stage).value
        except Exception as err:
            statuses[stage] = "failed"
            statuses.update(dict.fromkeys(stages[i + 1:], "not started"))
            _publish(statuses)
            raise PipelineFailed(f"stage {stage!r} failed ({_summary(statuses)}): {err}") from err
    logger.info("pipeline: %s", _summary(statuses))
    _publish(statuses)
    return statuses


def _summary(statuses: dict[str, str]) -> str:
    return ", ".join(f"{stage} {status}" for stage, status in statuses.items()) or "no stages"


def _publish(statuses: dict[str, str]) -> None:
    rows = "\n".join(f"| {stage} | {status} |" for stage, status in statuses.items())
    create_markdown_artifact(
        key="gmg-pipeline-stages",
        markdown=f"| stage | status |\n|---|---|\n{rows}\n",
        description="What DVC did with each stage in this run.",
    )
