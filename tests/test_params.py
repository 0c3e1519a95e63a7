"""Config loading: the params file is validated strictly and errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.params import ParamsError, StageConfig, load_section, parse_overrides


class Toy(StageConfig):
    steps: int
    lr: float
    name: str = "x"
    flag: bool = False


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


FULL = "name: x, flag: false"


class Outer(StageConfig):
    inner: Toy
    seed: int


def test_loads_and_is_frozen(tmp_path):
    cfg = load_section(write(tmp_path, f"toy: {{steps: 3, lr: 1e-3, {FULL}}}\n"), "toy", Toy)
    assert cfg == Toy(steps=3, lr=1e-3)
    with pytest.raises(Exception, match="frozen"):
        cfg.steps = 4  # type: ignore[misc]


def test_integer_accepted_for_float(tmp_path):
    path = write(tmp_path, f"toy: {{steps: 3, lr: 1, {FULL}}}\n")
    assert load_section(path, "toy", Toy).lr == 1.0


def test_keys_with_defaults_must_still_be_spelled_out(tmp_path):
    with pytest.raises(ParamsError, match="missing key 'toy.flag'"):
        load_section(write(tmp_path, "toy: {steps: 3, lr: 1, name: x}\n"), "toy", Toy)


def test_nested_sections_and_overrides(tmp_path):
    path = write(tmp_path, f"outer: {{seed: 1, inner: {{steps: 3, lr: 1, {FULL}}}}}\n")
    cfg = load_section(path, "outer", Outer, parse_overrides(["outer.inner.steps=9"]))
    assert cfg.inner.steps == 9
    other = tmp_path / "sub"
    other.mkdir()
    with pytest.raises(ParamsError, match="missing key 'outer.inner.lr'"):
        load_section(write(other, "outer: {seed: 1, inner: {steps: 3}}\n"), "outer", Outer)
    with pytest.raises(ParamsError, match="unknown key 'outer.inner.stepz'"):
        load_section(path, "outer", Outer, parse_overrides(["outer.inner.stepz=9"]))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (f"toy: {{steps: 3, lr: 0.1, stpes: 4, {FULL}}}\n", "unknown key 'toy.stpes'"),
        (f"toy: {{lr: 0.1, {FULL}}}\n", "missing key 'toy.steps'"),
        (f"toy: {{steps: three, lr: 0.1, {FULL}}}\n", "key 'toy.steps'"),
        (f"toy: {{steps: 2.5, lr: 0.1, {FULL}}}\n", "key 'toy.steps'"),
        ("toy: {steps: 1, lr: 0.1, name: x, flag: 'yes'}\n", "key 'toy.flag'"),
        ("other: {}\n", "missing section 'toy'"),
        ("toy: [1, 2]\n", "section 'toy' must be a mapping"),
        ("toy: {steps: [\n", "not valid YAML"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as info:
        load_section(path, "toy", Toy)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_section(tmp_path / "nope.yaml", "toy", Toy)


def test_overrides_apply_and_validate(tmp_path):
    path = write(tmp_path, f"toy: {{steps: 3, lr: 0.1, {FULL}}}\n")
    cfg = load_section(path, "toy", Toy, parse_overrides(["toy.steps=7", "toy.lr=1e-4"]))
    assert (cfg.steps, cfg.lr) == (7, 1e-4)
    with pytest.raises(ParamsError, match="unknown key 'toy.nope'"):
        load_section(path, "toy", Toy, parse_overrides(["toy.nope=1"]))


@pytest.mark.parametrize("bad", ["toy.steps", "steps=3", "=3", "toy.=3"])
def test_malformed_override(bad):
    with pytest.raises(ParamsError, match="section.key=value"):
        parse_overrides([bad])
