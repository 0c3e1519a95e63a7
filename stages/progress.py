"""Rich progress bars for stages; the library reports progress through plain callbacks.

``with task_progress("train", total=steps) as advance: advance(1, loss=0.3)`` shows a bar with
ETA and the latest values of the given fields. Output goes to stderr, so stdout stays clean for
data, and the bar is disabled when stderr is not a terminal unless ``GMG_PROGRESS=1``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["Advance", "task_progress"]

Advance = Callable[..., None]


def _enabled() -> bool:
    flag = os.environ.get("GMG_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "")
    return sys.stderr.isatty()


@contextlib.contextmanager
def task_progress(description: str, total: int | None) -> Iterator[Advance]:
    """Yield ``advance(n=1, **fields)`` that moves the bar and shows ``fields`` beside it."""
    if not _enabled():
        yield lambda n=1, **fields: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: float) -> None:
            info = "  ".join(f"{k} {v:.4g}" for k, v in fields.items())
            progress.update(task, advance=n, info=info)

        yield advance
