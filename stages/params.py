"""Load one section of ``params.yaml`` into a frozen, validated config.

Every stage declares a pydantic model (``extra="forbid"``, ``frozen=True``); this module reads
the YAML file once, applies ``--set section.key=value`` overrides and validates. Any problem
raises :class:`ParamsError` whose message names the file and the offending key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["ParamsError", "StageConfig", "load_section", "parse_overrides"]


class ParamsError(ValueError):
    """A params file or an override is missing, malformed or invalid."""


class StageConfig(BaseModel):
    """Base for stage configs: unknown keys are errors, values are immutable, types are strict."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


C = TypeVar("C", bound=StageConfig)


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """Parse ``section.key=value`` strings; values are read as YAML scalars (``1e-3``, ``true``)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        section, dot, key = name.partition(".")
        if not sep or not dot or not section or not key:
            raise ParamsError(f"override {item!r}: expected the form section.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ParamsError(f"override {item!r}: value is not valid YAML ({err})") from err
        if isinstance(value, str) and _is_float(raw):  # YAML 1.1 reads 1e-3 as a string
            value = float(raw)
        out.setdefault(section, {})[key] = value
    return out


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def _coerce_yaml_floats(raw: dict[str, Any], model: type[StageConfig]) -> dict[str, Any]:
    """YAML 1.1 reads ``1e-3`` as a string and ``1`` as int; accept both for float fields."""
    out = dict(raw)
    for name, field in model.model_fields.items():
        if name in out and field.annotation is float:
            value = out[name]
            is_int = isinstance(value, int) and not isinstance(value, bool)
            if is_int or (isinstance(value, str) and _is_float(value)):
                out[name] = float(value)
    return out


def load_section(
    path: Path | str,
    section: str,
    model: type[C],
    overrides: dict[str, dict[str, Any]] | None = None,
) -> C:
    """Read ``section`` of the YAML file at ``path`` into ``model``; errors name file and key."""
    path = Path(path)
    data = _read_yaml(path)
    if section not in data:
        raise ParamsError(f"{path}: missing section '{section}'")
    raw = data[section]
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: section '{section}' must be a mapping")
    merged = _merge(raw, (overrides or {}).get(section, {}))
    problems = _key_problems(merged, model, section)
    if problems:
        raise ParamsError("\n".join(f"{path}: {problem}" for problem in problems))
    try:
        return model.model_validate(_coerce_yaml_floats(merged, model))
    except ValidationError as err:
        raise ParamsError(_describe(path, section, err)) from None


def _merge(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply overrides; ``model.latent_dim=5`` reaches into the nested ``model`` mapping."""
    merged = dict(raw)
    for key, value in overrides.items():
        head, dot, rest = key.partition(".")
        if dot and isinstance(merged.get(head), dict):
            merged[head] = _merge(merged[head], {rest: value})
        else:
            merged[key] = value
    return merged


def _key_problems(raw: dict[str, Any], model: type[StageConfig], prefix: str) -> list[str]:
    """Unknown keys, and keys left out: every field must be spelled out in the params file
    (defaults in code would be invisible to ``dvc params diff``). Nested configs recurse."""
    fields = model.model_fields
    problems = []
    for name in raw:
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean '{prefix}.{close[0]}'?)" if close else ""
            problems.append(f"unknown key '{prefix}.{name}'{hint}")
    for name, field in fields.items():
        key = f"{prefix}.{name}"
        if name not in raw:
            problems.append(f"missing key '{key}'")
        elif _is_config(field.annotation) and isinstance(raw[name], dict):
            problems += _key_problems(raw[name], field.annotation, key)
    return problems


def _is_config(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, StageConfig)


def _describe(path: Path, section: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in (section, *e["loc"]))
        kind = e["type"]
        if kind == "extra_forbidden":
            lines.append(f"{path}: unknown key '{key}'")
        elif kind == "missing":
            lines.append(f"{path}: missing key '{key}'")
        else:
            lines.append(f"{path}: key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)
