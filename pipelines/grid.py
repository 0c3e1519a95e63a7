"""Sweep grids: ``section.key`` value lists expanded into named experiments.

A grid is a mapping ``{"train.regularizer": ["none", "gmg"], "train.seed": [0, 1]}`` (the
Cartesian product of its lists; a scalar is a one-value list) or a list of such mappings (the
union of their products, in order, without duplicates), so a sweep can pair, say, every cost
with ``train.regularizer=gmg`` but run ``train.regularizer=none`` only once. Keys are
generic: ``section.key`` in ``params.yaml`` or ``file.yaml:section.key`` in another params
file, exactly as ``dvc exp run -S`` takes them. Keys joined by commas move together:
``{"train.cost_x,train.cost_y": [["cosine", "cosine"], ["sqeuclidean", "sqeuclidean"]]}``.

A grid file is YAML with ``grid:`` (the above) and optionally ``name:`` (the experiment name
prefix).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Experiment",
    "GridError",
    "check_keys_exist",
    "check_name",
    "default_sweep_name",
    "expand_grid",
    "format_value",
    "load_grid_file",
    "parse_grid_options",
    "read_entries",
]

Grid = Mapping[str, Any] | Sequence[Mapping[str, Any]]

_KEY = re.compile(r"^(?:[\w./-]+:)?[A-Za-z_][\w-]*(?:\.[\w-]+)+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PLAIN = re.compile(r"^[A-Za-z0-9_.+/-]+$")
# YAML 1.1 (PyYAML) reads 1e-3 as a string; DVC's override parser and the stages read a float.
_SCI_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class GridError(ValueError):
    """A grid, a grid file or a sweep name is malformed; the message names the culprit."""


@dataclass(frozen=True)
class Experiment:
    """One point of the grid: its DVC experiment name and ``key -> value`` overrides."""

    name: str
    params: tuple[tuple[str, Any], ...]

    def overrides(self) -> list[str]:
        """``key=value`` strings for ``dvc exp run -S`` (values in DVC's override syntax)."""
        return [f"{key}={format_value(value)}" for key, value in self.params]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.params)


def format_value(value: Any) -> str:
    """Write a value so that ``dvc exp run -S key=<text>`` reads back the same value.

    DVC parses ``-S`` values with Hydra's override grammar; strings are left bare when that
    grammar reads them back unchanged and double-quoted otherwise. The result is checked with
    the same parser.
    """
    text = _render(value)
    parsed = _override_value(text)
    same = parsed == value or (isinstance(value, float) and value != value)
    if not same or (isinstance(value, str) and "${" in value):
        raise GridError(f"value {value!r} cannot be passed to `dvc exp run --set-param`")
    return text


def _render(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.match(value) and _override_value(value) == value:
            return value
        escaped = re.sub(r'(\\+)(?="|$)', lambda m: m.group(1) * 2, value).replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str) or not re.match(r"^[A-Za-z_]\w*$", key):
                raise GridError(f"value {value!r}: mapping keys must be identifiers")
        return "{" + ", ".join(f"{k}: {_render(v)}" for k, v in value.items()) + "}"
    raise GridError(f"value {value!r}: unsupported type {type(value).__name__}")


@functools.cache
def _override_parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _override_value(text: str) -> Any:
    """The value DVC's ``--set-param`` parser (Hydra) reads from ``key=<text>``."""
    try:
        return _override_parser().parse_override(f"key={text}").value()
    except Exception:  # noqa: BLE001 - any parse error means "does not read back"
        return _UNREADABLE


_UNREADABLE = object()


def _normalise(value: Any) -> Any:
    if isinstance(value, str) and _SCI_FLOAT.match(value):
        return float(value)
    return value


def _check_str(key: Any) -> str:
    if not isinstance(key, str):
        raise GridError(f"grid key {key!r}: expected section.key (or file.yaml:section.key)")
    return key


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise GridError(f"grid key {key!r}: expected section.key (or file.yaml:section.key)")
    return key


def _as_grids(grid: Grid) -> list[Mapping[str, Any]]:
    grids = [grid] if isinstance(grid, Mapping) else list(grid)
    if not grids or not all(isinstance(g, Mapping) and g for g in grids):
        raise GridError("a grid is a non-empty mapping of key -> values, or a list of them")
    return grids


def expand_grid(grid: Grid, name: str) -> list[Experiment]:
    """All experiments of ``grid``, named ``<name>-000``, ``<name>-001``, ... in grid order."""
    check_name(name)
    combos: list[tuple[tuple[str, Any], ...]] = []
    seen: set[str] = set()
    for sub in _as_grids(grid):
        axes = [_axis(key, value) for key, value in sub.items()]
        for choice in itertools.product(*(points for _, points in axes)):
            params = tuple(
                pair for (keys, _), point in zip(axes, choice, strict=True)
                for pair in zip(keys, point, strict=True)
            )
            fingerprint = json.dumps(sorted(params, key=lambda kv: kv[0]), default=str)
            if fingerprint not in seen:
                seen.add(fingerprint)
                combos.append(params)
    width = max(3, len(str(len(combos) - 1)))
    return [Experiment(f"{name}-{i:0{width}d}", params) for i, params in enumerate(combos)]


def _axis(key: Any, value: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    """One axis: its keys and its points (tuples of values, one per key).

    ``"a.x,a.y": [[1, 2], [3, 4]]`` ties keys together: (a.x=1, a.y=2) or (a.x=3, a.y=4).
    """
    keys = [_check_key(k.strip()) for k in _check_str(key).split(",")]
    values = value if isinstance(value, list | tuple) else [value]
    if not values:
        raise GridError(f"grid key {key!r}: empty list of values")
    if len(keys) == 1:
        return keys, [(_normalise(v),) for v in values]
    points = []
    for v in values:
        if not isinstance(v, list | tuple) or len(v) != len(keys):
            raise GridError(f"grid key {key!r}: each value must be a list of {len(keys)} values")
        points.append(tuple(_normalise(x) for x in v))
    return keys, points


def check_keys_exist(root: Path, experiments: Sequence[Experiment]) -> None:
    """Fail before anything runs if a key is not in its params file (DVC would reject it)."""
    files: dict[str, Any] = {}
    missing = []
    for key in dict.fromkeys(k for e in experiments for k, _ in e.params):
        file, _, dotted = key.rpartition(":")
        file = file or "params.yaml"
        if file not in files:
            path = root / file
            files[file] = yaml.safe_load(path.read_text()) if path.is_file() else None
        node = files[file]
        for part in dotted.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is _MISSING:
            missing.append(key)
    if missing:
        raise GridError(f"grid keys not found in the params files of {root}: {', '.join(missing)}")


_MISSING = object()


def check_name(name: str) -> str:
    """Experiment names become git refs: letters, digits, ``_.-``, no ``..``."""
    if not _NAME.match(name) or ".." in name or name.endswith((".", ".lock")):
        raise GridError(f"sweep name {name!r}: use letters, digits, '_', '.', '-' only")
    return name


def default_sweep_name(now: datetime | None = None) -> str:
    """``sweep-YYYYmmdd-HHMMSS`` (local time)."""
    return (now or datetime.now()).strftime("sweep-%Y%m%d-%H%M%S")


def read_entries(
    path: Path, what: str, required: set[str], optional: set[str] = frozenset()
) -> dict[str, Any]:
    """A YAML mapping with the ``required`` entries and no others but ``optional`` ones."""
    if not path.is_file():
        raise GridError(f"{path}: {what} file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise GridError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise GridError(f"{path}: expected a mapping with {', '.join(sorted(required))}")
    unknown, missing = set(data) - required - optional, required - set(data)
    if unknown or missing:
        allowed = ", ".join(sorted(required | optional))
        raise GridError(f"{path}: unknown entries {sorted(unknown)}, missing {sorted(missing)} "
                        f"(allowed: {allowed})")
    return data


def load_grid_file(path: Path) -> tuple[Grid, str | None]:
    """Read ``grid:`` and the optional ``name:`` from a YAML file."""
    data = read_entries(path, "grid", {"grid"}, {"name"})
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise GridError(f"{path}: 'name' must be a string")
    _as_grids(data["grid"])
    return data["grid"], name


def parse_grid_options(items: Sequence[str]) -> dict[str, list[Any]]:
    """``key=v1,v2,...`` command-line items into one grid mapping (values read as YAML)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not raw:
            raise GridError(f"grid option {item!r}: expected key=value1,value2,...")
        try:
            values = [yaml.safe_load(part) for part in raw.split(",")]
        except yaml.YAMLError as err:
            raise GridError(f"grid option {item!r}: a value is not valid YAML ({err})") from err
        grid[_check_key(key.strip())] = values
    return grid
