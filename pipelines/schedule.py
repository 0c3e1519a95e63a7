"""Serve the pipeline flow on a cron schedule against a Prefect server.

Schedules need a running server (``prefect server start``, or Prefect Cloud): in ephemeral
mode Prefect creates no scheduled runs. The served deployment runs one pipeline at a time
(``limit=1``), since two ``dvc repro`` in one workspace would compete for the same outputs.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["NoServerError", "serve_pipeline"]


class NoServerError(RuntimeError):
    """``PREFECT_API_URL`` is not set, so there is no server to hold the schedule."""


def serve_pipeline(
    root: Path,
    cron: str,
    name: str = "gmg-pipeline-schedule",
    timezone: str | None = None,
    retries: int = 0,
) -> None:
    """Register a deployment of :func:`pipelines.pipeline.pipeline` and serve it until stopped.

    Blocks; Ctrl-C (or SIGTERM) pauses the schedule and returns.
    """
    from prefect.flows import EntrypointType
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_API_URL

    from pipelines.pipeline import pipeline

    if not PREFECT_API_URL.value():
        raise NoServerError(
            "schedules need a Prefect server: start one with `prefect server start --host "
            "127.0.0.1` and set PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    pipeline.serve(
        name=name,
        schedule=Cron(cron, timezone=timezone),
        parameters={"root": str(root.resolve()), "retries": retries},
        limit=1,
        entrypoint_type=EntrypointType.MODULE_PATH,
        description=f"dvc repro, stage by stage, of {root.resolve()} on '{cron}'",
    )
