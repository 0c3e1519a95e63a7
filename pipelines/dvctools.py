"""Thin helpers around the DVC and git command lines, shared by the flows.

Every command is an argument list run without a shell. DVC is started as
``<this python> -m dvc`` so the flows use the DVC of the environment they run in, and that
environment's ``bin`` folder is put first on ``PATH`` so stage commands such as
``python -m gmg train`` run with the same interpreter.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

__all__ = [
    "CommandError",
    "CommandResult",
    "StageStatus",
    "child_env",
    "dvc_argv",
    "git",
    "pipeline_stages",
    "repro_status",
    "run_command",
]

TAIL_LINES = 40


class StageStatus(StrEnum):
    """What ``dvc repro --single-item <stage>`` did with a stage."""

    RAN = "ran"  # the stage command ran
    RESTORED = "restored"  # outputs checked out from DVC's run-cache, command not run
    SKIPPED = "skipped"  # dvc.lock and the workspace already matched


@dataclass(frozen=True)
class CommandResult:
    """Exit code and combined stdout/stderr of a finished command."""

    argv: tuple[str, ...]
    returncode: int
    output: str

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


class CommandError(RuntimeError):
    """A command exited with a non-zero code; the message ends with its last output lines."""

    def __init__(self, result: CommandResult, what: str) -> None:
        self.result = result
        super().__init__(f"{what} exited with code {result.returncode}:\n{result.tail()}")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for DVC and stage subprocesses (analytics off, unbuffered output, this
    interpreter first on ``PATH``)."""
    env = dict(os.environ)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")  # DVC and stage logs reach Prefect line by line
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def dvc_argv(*args: str) -> list[str]:
    """``python -m dvc <args>`` with the interpreter that runs the flow."""
    return [sys.executable, "-m", "dvc", *args]


def run_command(
    argv: Sequence[str],
    cwd: Path,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
    what: str | None = None,
) -> CommandResult:
    """Run ``argv`` in ``cwd``, stream each output line to ``on_line`` and return the output.

    Output kept in memory is bounded (the last lines only are needed to report a failure and to
    read DVC's per-stage messages). Raises :class:`CommandError` on a non-zero exit if ``check``.
    """
    kept: deque[str] = deque(maxlen=2000)
    with subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            kept.append(line)
            if on_line is not None:
                on_line(line)
    result = CommandResult(tuple(argv), proc.returncode, "\n".join(kept))
    if check and result.returncode != 0:
        raise CommandError(result, what or " ".join(argv[:4]))
    return result


def git(*args: str, cwd: Path, check: bool = True) -> str:
    """Run ``git <args>`` in ``cwd`` and return its stripped stdout."""
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=child_env(), capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise CommandError(
            CommandResult(("git", *args), proc.returncode, proc.stdout + proc.stderr),
            f"git {args[0]}",
        )
    return proc.stdout.strip()


def repro_status(stage: str, output: str) -> StageStatus:
    """Read what ``dvc repro --single-item <stage>`` did from DVC's own log lines."""
    name = re.escape(stage)
    if re.search(rf"^Running stage '{name}':", output, re.MULTILINE):
        return StageStatus.RAN
    if re.search(rf"^Stage '{name}' is cached - skipping run", output, re.MULTILINE):
        return StageStatus.RESTORED
    return StageStatus.SKIPPED


def pipeline_stages(root: Path) -> list[str]:
    """Names of the pipeline stages (``dvc.yaml`` entries, not ``.dvc`` files) in DAG order.

    Upstream stages come first; stages that do not depend on each other keep the order in
    which DVC lists them (file order of ``dvc.yaml``).
    """
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:
        stages = list(repo.index.stages)
        position = {stage: i for i, stage in enumerate(stages)}
        # DVC's graph points from a stage to the stages it depends on.
        upstream_first = repo.index.graph.reverse(copy=True)
        ordered = nx.lexicographical_topological_sort(
            upstream_first, key=lambda stage: position.get(stage, len(position))
        )
        return [_address(s, root) for s in ordered if isinstance(s, PipelineStage)]


def _address(stage: object, root: Path) -> str:
    """``name`` for stages of the top ``dvc.yaml``, ``sub/dvc.yaml:name`` otherwise."""
    dvcfile = Path(stage.path).resolve()  # type: ignore[attr-defined]
    rel = os.path.relpath(dvcfile, root.resolve())
    return stage.name if rel == "dvc.yaml" else f"{rel}:{stage.name}"  # type: ignore[attr-defined]
