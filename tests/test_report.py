"""Report stage on tiny inputs: files, figure geometry and pixels, tables, HTML, provenance."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from gmgcore.models import build_model
from stages import figures
from stages.modelio import load_model, save_model
from stages.report import ReportConfig, run
from stages.report_content import dvc_lock_entries, format_value, git_commit
from stages.report_latents import kl_order, latent_stats, reconstruct, traverse
from stages.report_template import build_plots_template
from stages.store import write_store

REPO = Path(__file__).resolve().parents[1]
FACTORS = ("pos_x", "pos_y", "scale")
SIZES = (4, 4, 3)
METRICS = {"dci.disentanglement": 0.61, "dci.completeness": 0.5, "mig.mig": 0.123456, "sap": 2e-5}
CFG = ReportConfig(traversal_steps=5, n_recon=6, n_kl=64, seed=3, html=True)
FIGURES = ("traversals.png", "reconstructions.png", "training_curves.png", "dci_importance.png")


def _squares() -> tuple[np.ndarray, np.ndarray]:
    """48 binary 64×64 images of a white square; factors: x, y position and size classes."""
    classes = np.array(list(itertools.product(*map(range, SIZES))), dtype=np.int64)
    images = np.zeros((len(classes), 64, 64), dtype=np.uint8)
    for i, (x, y, s) in enumerate(classes):
        side, x0, y0 = 8 + 6 * s, 6 + 12 * x, 6 + 12 * y
        images[i, y0 : y0 + side, x0 : x0 + side] = 255
    return images, classes


@dataclass(frozen=True)
class Inputs:
    root: Path
    data: Path
    model: Path
    log: Path
    metrics: Path
    importance: Path
    params: Path

    def run(self, out: Path, cfg: ReportConfig = CFG, **changes: Path) -> Path:
        paths = {k: getattr(self, k) for k in ("data", "model", "log", "metrics", "importance")}
        paths.update(changes)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(self.root)  # provenance reads ./dvc.lock and git from the working folder
            mp.setenv("GIT_CEILING_DIRECTORIES", str(self.root.parent))
            run(cfg, **paths, out=out, device="cpu", params_file=self.params)
        return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("report")
    images, classes = _squares()
    write_store(root / "data", images, classes, FACTORS, SIZES, "test_squares", {}, 16)
    torch.manual_seed(0)
    model = build_model(
        {"architecture": "mlp", "observation_shape": [64, 64], "latent_dim": 4, "hidden": [16]}
    )
    save_model(root / "model.pt", model)
    steps = np.arange(0, 300, 10)
    log = pd.DataFrame({"step": steps, "loss": 50.0 / (1 + steps), "kl": np.sqrt(steps + 1.0)})
    log.to_csv(root / "train_log.csv", index=False)
    (root / "metrics.json").write_text(json.dumps(METRICS))
    rng = np.random.default_rng(0)
    importance = pd.DataFrame(
        rng.random((4, 3)), index=[f"z{i}" for i in range(4)], columns=FACTORS
    )
    importance.to_parquet(root / "importance.parquet")
    params = {"report": CFG.model_dump(), "train": {"lr": 0.00025, "steps": 7}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    lock = {
        "schema": "2.0",
        "stages": {
            "train": {
                "deps": [{"path": "data", "md5": "d" * 32 + ".dir", "size": 1}],
                "outs": [{"path": "model.pt", "md5": "a" * 32, "size": 123}],
            },
            "prepare": {"outs": [{"path": "data", "md5": "b" * 32 + ".dir", "size": 9}]},
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    return Inputs(
        root,
        root / "data",
        root / "model.pt",
        root / "train_log.csv",
        root / "metrics.json",
        root / "importance.parquet",
        root / "params.yaml",
    )


@pytest.fixture(scope="module")
def report(inputs) -> Path:
    return inputs.run(inputs.root / "reports")


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _grid_size(rows: int, cols: int, margins: figures.Margins) -> tuple[int, int]:
    """Pixel (width, height) of a figure holding a rows × cols grid of 64-px tiles."""
    tile = figures.mosaic(np.zeros((rows, cols, 64, 64), dtype=np.uint8))
    width = round((margins.left + margins.right) * figures.DPI) + tile.shape[1]
    height = round((margins.top + margins.bottom) * figures.DPI) + tile.shape[0]
    return width, height


def test_writes_every_file_and_pngs_decode_with_grid_sizes(report):
    names = sorted(p.name for p in report.iterdir())
    expected = [*FIGURES, "index.html", "latent_kl.json", "metrics.md", "metrics_records.json"]
    assert names == sorted([*expected, "report.md"])
    sizes = {name: Image.open(report / name).size for name in FIGURES}
    assert sizes["traversals.png"] == _grid_size(4, CFG.traversal_steps, figures.TRAVERSAL_MARGINS)
    assert sizes["reconstructions.png"] == _grid_size(
        2, CFG.n_recon, figures.RECONSTRUCTION_MARGINS
    )
    assert all(w > 200 and h > 150 for w, h in sizes.values())


def test_traversal_rows_are_decoded_latents_in_kl_order(inputs, report):
    images, _ = _squares()
    model = load_model(inputs.model)
    stats = latent_stats(model, images)  # n_kl > 48: the stage used every image
    order = kl_order(stats.kl)
    kl = json.loads((report / "latent_kl.json").read_text())
    np.testing.assert_allclose([r["kl"] for r in kl], stats.kl, rtol=1e-6)
    ref = int(re.search(r"posterior mean of image #(\d+)", (report / "report.md").read_text())[1])
    mu_ref = latent_stats(model, images[ref : ref + 1]).mu[0]
    values = np.linspace(-CFG.traversal_range, CFG.traversal_range, CFG.traversal_steps)
    expected = figures.mosaic(traverse(model, mu_ref, order, values, colour=False))
    m = figures.TRAVERSAL_MARGINS
    top, left = round(m.top * figures.DPI), round(m.left * figures.DPI)
    shown = _png(report / "traversals.png")[top:, left:][: expected.shape[0], : expected.shape[1]]
    np.testing.assert_array_equal(shown, np.repeat(expected[..., None], 3, axis=-1))


def test_reconstruction_grid_shows_inputs_over_reconstructions(inputs, report):
    png = _png(report / "reconstructions.png")
    m = figures.RECONSTRUCTION_MARGINS
    top, left = round(m.top * figures.DPI), round(m.left * figures.DPI)
    images, _ = _squares()
    model = load_model(inputs.model)
    band = png[top + 2 : top + 2 + 64, left + 2 :]
    shown = [band[:, i * 66 : i * 66 + 64, 0] for i in range(CFG.n_recon)]
    idx = [int(np.flatnonzero((images == s).all(axis=(1, 2)))[0]) for s in shown]
    recon_band = png[top + 68 : top + 68 + 64, left + 2 :]
    expected = reconstruct(model, images[idx])
    for i in range(CFG.n_recon):
        np.testing.assert_array_equal(recon_band[:, i * 66 : i * 66 + 64, 0], expected[i])


def test_metrics_markdown_has_every_metric(report):
    rows = re.findall(r"^\| ([^|]+) \| ([^|]+) \|$", (report / "metrics.md").read_text(), re.M)
    table = {k.strip(): v.strip() for k, v in rows[2:]}
    assert table == {k: format_value(v) for k, v in METRICS.items()}
    for name, value in METRICS.items():
        assert float(table[name]) == pytest.approx(value, rel=1e-3)
    records = json.loads((report / "metrics_records.json").read_text())
    assert {r["metric"]: r["value"] for r in records} == METRICS


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_embeds_every_figure_params_and_provenance(report):
    text = (report / "index.html").read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(text)
    srcs = [a["src"] for t, a in parser.tags if t == "img"]
    prefix = "data:image/png;base64,"
    assert all(s.startswith(prefix) for s in srcs)
    embedded = sorted(base64.b64decode(s[len(prefix) :]) for s in srcs)
    assert embedded == sorted((report / name).read_bytes() for name in FIGURES)
    links = [v for _, a in parser.tags for k, v in a.items() if k in ("src", "href")]
    assert not [v for v in links if re.match(r"\s*(https?:)?//", v or "")]
    assert not [t for t, _ in parser.tags if t in ("script", "link", "iframe")]
    csp = [a["content"] for t, a in parser.tags if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]
    assert "train.lr" in text and "0.00025" in text
    assert "a" * 32 in text and "b" * 32 + ".dir" in text  # dvc.lock hashes of model and data
    for name in METRICS:
        assert name in text


def test_same_inputs_give_same_bytes(inputs, report, tmp_path):
    again = inputs.run(tmp_path / "again")
    for path in sorted(report.iterdir()):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.parametrize("importance", ["missing", "empty"])
def test_missing_optional_inputs_skip_their_part_with_a_note(inputs, tmp_path, importance):
    gone = {k: tmp_path / f"missing_{k}" for k in ("log", "metrics", "importance")}
    if importance == "empty":  # what the evaluate stage writes when DCI is not computed
        pd.DataFrame(index=pd.Index([], name="code", dtype=str)).to_parquet(gone["importance"])
    out = inputs.run(tmp_path / "partial", **gone)
    names = {p.name for p in out.iterdir()}
    assert {"traversals.png", "reconstructions.png", "index.html", "metrics.md"} <= names
    assert not names & {"training_curves.png", "dci_importance.png"}
    md, html = (out / "report.md").read_text(), (out / "index.html").read_text()
    for path in gone.values():
        assert str(path) in md and str(path) in html
    assert ("is empty" in md) == (importance == "empty")
    assert "No metrics" in (out / "metrics.md").read_text()
    assert html.count("<img ") == 2


def test_html_off_and_bad_inputs_keep_previous_report(inputs, tmp_path):
    out = inputs.run(tmp_path / "r", cfg=CFG.model_copy(update={"html": False}))
    assert not (out / "index.html").exists() and (out / "traversals.png").is_file()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad_log = tmp_path / "bad.csv"
    bad_log.write_text("iteration,loss\n0,1.0\n")
    with pytest.raises(ValueError, match="bad.csv.*'step'"):
        inputs.run(out, log=bad_log)
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        inputs.run(out, model=tmp_path / "nothere.pt")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="traversal_steps"):
        ReportConfig(traversal_steps=1)
    with pytest.raises(ValueError, match="traversal_range"):
        ReportConfig(traversal_range=0.0)
    with pytest.raises(ValueError, match="colour"):
        ReportConfig(colour=True)


class _FixedEncoder(torch.nn.Module):
    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        super().__init__()
        self.mu, self.logvar = mu, logvar

    def encode(self, x: torch.Tensor):
        return self.mu[: len(x)], self.logvar[: len(x)]


def test_latent_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(7, 3, generator=gen), torch.randn(7, 3, generator=gen)
    stats = latent_stats(_FixedEncoder(mu, logvar), np.zeros((7, 4, 4), np.uint8), batch_size=7)
    q = torch.distributions.Normal(mu.double(), (0.5 * logvar.double()).exp())
    p = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
    reference = torch.distributions.kl_divergence(q, p).mean(0).numpy()
    np.testing.assert_allclose(stats.kl, reference, rtol=1e-12)
    np.testing.assert_allclose(stats.mu_std, mu.double().std(0, unbiased=False), rtol=1e-12)
    assert list(kl_order(np.array([0.1, 2.0, 0.1, 3.0]))) == [3, 1, 0, 2]


def test_traverse_matches_one_decode_per_cell():
    torch.manual_seed(1)
    model = build_model(
        {"architecture": "mlp", "observation_shape": [8, 8, 3], "latent_dim": 3, "hidden": [8]}
    ).eval()
    z_ref, latents, values = np.array([0.3, -1.0, 0.5]), np.array([2, 0]), np.array([-1.0, 0.0, 2])
    grid = traverse(model, z_ref, latents, values, colour=True, batch_size=4)
    assert grid.shape == (2, 3, 8, 8, 3) and grid.dtype == np.uint8
    for r, c in itertools.product(range(2), range(3)):
        z = z_ref.copy()
        z[latents[r]] = values[c]
        with torch.no_grad():
            mean = torch.sigmoid(model.decode(torch.tensor(z[None], dtype=torch.float32)))
        expected = (mean[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        np.testing.assert_array_equal(grid[r, c], expected)


def test_dvc_lock_entries_prefer_outputs_and_tolerate_missing(tmp_path):
    lock = {
        "stages": {
            "evaluate": {"deps": [{"path": "models/model.pt", "md5": "1" * 32, "size": 5}]},
            "train": {"outs": [{"path": "models/model.pt", "md5": "2" * 32, "size": 5}]},
        }
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    paths = [Path("models/model.pt"), tmp_path / "models" / "model.pt", Path("other")]
    entries = dvc_lock_entries(tmp_path / "dvc.lock", paths, tmp_path)
    assert [(e.path, e.md5, e.stage) for e in entries] == [
        ("models/model.pt", "2" * 32, "train")
    ] * 2
    assert dvc_lock_entries(tmp_path / "absent.lock", paths, tmp_path) == ()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_reads_head_and_tolerates_no_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo = tmp_path / "repo"
    repo.mkdir()
    assert git_commit(repo) is None
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(
        ["git", *ident, "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True
    )
    head = (repo / ".git" / "HEAD").read_text().split()[-1]
    assert git_commit(repo) == (repo / ".git" / head).read_text().strip()


def test_plots_template_is_the_offline_build_of_the_vendored_files():
    vendor = REPO / "plots" / "vendor"
    text = (REPO / "plots" / "template.html").read_text(encoding="utf-8")
    assert text == build_plots_template(vendor)
    assert "{plot_divs}" in text and "{scripts}" not in text
    parser = _Tags()  # script bodies are raw text to the parser: only real tags are listed
    parser.feed(text)
    scripts = [a for t, a in parser.tags if t == "script"]
    assert len(scripts) == 3 and not [a for a in scripts if "src" in a]
    assert not [(t, a) for t, a in parser.tags if {"src", "href"} & set(a)]
    readme = (vendor / "README.md").read_text()
    for script in ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js"):
        digest = hashlib.sha256((vendor / script).read_bytes()).hexdigest()
        assert re.search(rf"`{re.escape(script)}`.*{digest}", readme), script


def test_figures_are_pixel_exact_for_colour_and_small_tiles():
    rng = np.random.default_rng(1)
    grid = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    png = figures.traversal_figure(grid, ["a", "b"], [-1.0, 0.0, 1.0], "t", dimmed=[False, True])
    big = figures.mosaic(grid.repeat(4, axis=2).repeat(4, axis=3))  # 16-px tiles drawn at 64 px
    m = figures.TRAVERSAL_MARGINS
    top, left = round(m.top * figures.DPI), round(m.left * figures.DPI)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    np.testing.assert_array_equal(image[top : top + big.shape[0], left : left + big.shape[1]], big)
