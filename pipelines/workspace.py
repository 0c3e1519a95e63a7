"""One isolated workspace per experiment: a git clone that runs ``dvc exp run`` and pushes back.

Concurrent ``dvc exp run --temp`` calls in one repository share DVC's workspace stash and
repository lock, so several of them started at once fail with "Unable to acquire lock" (see
docs/flows.md). Each experiment therefore runs in its own clone of the repository:

- **local mode** (workers share the file system with the repository): the clone starts from
  the baseline commit plus a snapshot of the uncommitted changes (new files included, and
  recorded in the experiment commit), uses the repository's own
  DVC cache (``cache.dir`` in the clone's ``.dvc/config.local``), and pushes only the
  experiment's git ref back to the repository (what ``dvc exp push --no-cache`` does);
- **remote mode** (workers on other machines): the clone comes from a git URL at the baseline
  commit, pulls missing inputs from the default DVC remote (``--pull``) and pushes the
  experiment's ref to the git remote and its outputs to the DVC remote; the sweep flow then
  pulls the experiments into the repository.

Either way the experiment is an ordinary DVC experiment of the baseline commit, listed by
``dvc exp show``, and no two experiments share a workspace or an output file.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.dvctools import CommandError, dvc_argv, git, run_command
from pipelines.grid import Experiment

__all__ = ["Baseline", "prepare_baseline", "remove_tree", "run_experiment_in_clone"]

SWEEPS_DIR = Path(".dvc") / "tmp" / "gmg-sweeps"


@dataclass(frozen=True)
class Baseline:
    """What every experiment workspace of one sweep starts from and where its results go."""

    source: str  # clone source: the repository folder (local mode) or a git URL (remote mode)
    rev: str  # baseline commit
    workdir: str | None  # folder for the clones; None: the system temp folder of the worker
    cache_dir: str | None = None  # local mode: the repository's DVC cache
    changes_dir: str | None = None  # local mode: snapshot of uncommitted files
    deleted: tuple[str, ...] = ()  # local mode: tracked files deleted in the workspace
    dvc_remote: str | None = None  # remote mode: DVC remote name (default remote if None)

    @property
    def local(self) -> bool:
        return self.cache_dir is not None


def prepare_baseline(
    root: Path,
    sweep_name: str,
    git_remote: str | None = None,
    dvc_remote: str | None = None,
) -> Baseline:
    """Record the baseline commit and, in local mode, snapshot the uncommitted changes.

    ``git_remote`` (a remote name of ``root`` or a URL) selects remote mode; the workspace must
    then be clean, since workers only see what was pushed.
    """
    top = git("rev-parse", "--show-toplevel", cwd=root, check=False)
    if not top or Path(top).resolve() != root.resolve():
        raise ValueError(f"{root}: sweeps need the DVC project at the top of a git repository")
    rev = git("rev-parse", "--verify", "HEAD^{commit}", cwd=root, check=False)
    if not rev:
        raise ValueError(f"{root}: the repository needs at least one commit to run experiments")
    changed = _uncommitted(root)
    if git_remote is not None:
        if changed:
            listed = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
            raise ValueError(
                f"{root}: uncommitted changes ({listed}); commit and push them before a "
                "sweep on remote workers"
            )
        url = git("remote", "get-url", git_remote, cwd=root, check=False) or git_remote
        return Baseline(source=url, rev=rev, workdir=None, dvc_remote=dvc_remote)

    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        cache_dir = repo.cache.local_cache_dir
    sweep_dir = root / SWEEPS_DIR / sweep_name
    changes = sweep_dir / "changes"
    deleted = []
    for rel in changed:
        src = root / rel
        if os.path.lexists(src):
            dst = changes / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)
        else:
            deleted.append(rel)
    return Baseline(
        source=str(root), rev=rev, workdir=str(sweep_dir), cache_dir=str(cache_dir),
        changes_dir=str(changes) if changes.exists() else None, deleted=tuple(deleted),
    )


def _uncommitted(root: Path) -> list[str]:
    """Paths that differ from HEAD: modified, added, deleted and untracked (not ignored)."""
    out = git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames", cwd=root)
    return sorted({entry[3:] for entry in out.split("\0") if len(entry) > 3})


def run_experiment_in_clone(
    experiment: Experiment, baseline: Baseline, on_line: Callable[[str], None] | None = None
) -> str:
    """Clone, apply the overrides with ``dvc exp run``, push the result; return its commit."""
    parent = Path(baseline.workdir) if baseline.workdir else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    clone = Path(tempfile.mkdtemp(prefix=f"{experiment.name}-", dir=parent))
    try:
        _make_clone(clone, baseline)
        run = ["exp", "run", "--name", experiment.name]
        for override in experiment.overrides():
            run += ["--set-param", override]
        if not baseline.local:
            run.append("--pull")
        run_command(dvc_argv(*run), cwd=clone, on_line=on_line, what="dvc exp run")
        ref = f"refs/exps/{baseline.rev[:2]}/{baseline.rev[2:]}/{experiment.name}"
        rev = git("rev-parse", "--verify", "--quiet", ref, cwd=clone, check=False)
        if not rev:
            raise RuntimeError(f"dvc exp run recorded no experiment {experiment.name!r}")
        if baseline.local:
            # Outputs are already in the shared cache: only the git ref goes back, as
            # `dvc exp push --no-cache` would do, without a second DVC start-up.
            git("push", "--quiet", "--force", "origin", f"{ref}:{ref}", cwd=clone)
        else:
            push = ["exp", "push", "--force"]
            if baseline.dvc_remote:
                push += ["--remote", baseline.dvc_remote]
            run_command(dvc_argv(*push, "origin", experiment.name), cwd=clone, on_line=on_line,
                        what="dvc exp push")
        return rev
    finally:
        remove_tree(clone)


def _make_clone(clone: Path, baseline: Baseline) -> None:
    git("clone", "--quiet", "--no-checkout", baseline.source, str(clone), cwd=clone.parent)
    try:
        git("checkout", "--quiet", "--detach", baseline.rev, cwd=clone)
    except CommandError as err:
        raise RuntimeError(
            f"baseline commit {baseline.rev[:10]} is not in {baseline.source}: push it first"
        ) from err
    if not baseline.local:
        return
    if baseline.changes_dir:
        shutil.copytree(baseline.changes_dir, clone, symlinks=True, dirs_exist_ok=True)
    for rel in baseline.deleted:
        (clone / rel).unlink(missing_ok=True)
    if baseline.changes_dir or baseline.deleted:
        # Staged, so that the experiment commit records new files too (DVC leaves untracked
        # files out of experiment commits).
        git("add", "--all", cwd=clone)
    _share_cache(Path(baseline.source), clone, baseline.cache_dir)


def _share_cache(root: Path, clone: Path, cache_dir: str | None) -> None:
    """Give the clone the repository's local DVC config, with its cache as the clone's cache."""
    from configobj import ConfigObj

    local = root / ".dvc" / "config.local"
    config = ConfigObj(str(local)) if local.is_file() else ConfigObj()
    config.filename = str(clone / ".dvc" / "config.local")
    config.setdefault("cache", {})["dir"] = cache_dir
    config.write()


def remove_tree(path: Path) -> None:
    """Delete a folder, including read-only files (DVC protects linked outputs)."""

    def make_writable(func: Callable[[str], object], name: str, _exc: object) -> None:
        os.chmod(name, stat.S_IWRITE | stat.S_IREAD | stat.S_IEXEC)
        func(name)

    if path.exists():
        shutil.rmtree(path, onerror=make_writable)
