"""Stage ``prepare``: config validation, subsets, the manifest rebuilding its ground truth, and
atomic replacement of the output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from gmgcore.data import get_dataset
from stages.params import ParamsError, load_section
from stages.prepare import PrepareConfig, run, subset_indices
from stages.store import open_store


def test_config_is_strict():
    assert PrepareConfig().dataset == "dsprites_procedural"
    for bad in ({"fraction": 0.0}, {"fraction": 1.5}, {"fraction": "0.1"}, {"seed": 1.5},
                {"row_group_size": 0}, {"dataset": "mnist"}, {"colour": True}):  # fmt: skip
        with pytest.raises(ValidationError):
            PrepareConfig(**bad)


def test_params_section(tmp_path):
    params = tmp_path / "params.yaml"
    section = (
        "prepare:\n  dataset: smallnorb\n  path: data/norb\n  options: {split: test}\n"
        "  fraction: 1e-3\n  seed: 4\n  row_group_size: 1024\n  chunk_size: 8192\n"
    )
    params.write_text(section)
    cfg = load_section(params, "prepare", PrepareConfig)
    assert cfg.fraction == pytest.approx(1e-3) and cfg.seed == 4 and cfg.path == "data/norb"
    assert cfg.options == {"split": "test"}
    params.write_text(section + "  sede: 4\n")
    with pytest.raises(ParamsError, match="unknown key 'prepare.sede'"):
        load_section(params, "prepare", PrepareConfig)


def test_subset_indices():
    idx = subset_indices(1000, 0.1, seed=0)
    assert len(idx) == 100 and len(np.unique(idx)) == 100 and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(idx, subset_indices(1000, 0.1, seed=0))
    assert not np.array_equal(idx, subset_indices(1000, 0.1, seed=1))
    np.testing.assert_array_equal(subset_indices(7, 1.0, seed=3), np.arange(7))
    assert len(subset_indices(10, 1e-9, seed=0)) == 1


def test_prepare_procedural_subset(tmp_path):
    cfg = PrepareConfig(fraction=0.002, seed=1, row_group_size=512, chunk_size=700)
    manifest = run(cfg, tmp_path / "dataset")
    store = open_store(tmp_path / "dataset", verify=True)
    assert manifest == store.manifest
    assert len(store) == round(0.002 * 737_280) == manifest["num_images"]
    assert manifest["subset"] == {"fraction": 0.002, "seed": 1, "source_images": 737_280}
    assert manifest["source"] == "procedural"
    index = store.source_index()
    np.testing.assert_array_equal(index, subset_indices(737_280, 0.002, 1))
    truth = get_dataset(manifest["dataset"], **manifest["options"])
    np.testing.assert_array_equal(store.factors(), truth.index_to_classes(index))
    rows = np.arange(0, len(store), 97)
    np.testing.assert_array_equal(store.images(rows), truth.images(store.factors()[rows]))
    np.testing.assert_allclose(manifest["factor_values"][2], truth.factor_values[2])
    again = run(cfg, tmp_path / "again")
    assert again["content_hash"] == manifest["content_hash"]


def test_prepare_real_file(tmp_path):
    sizes = (2, 1, 2, 1, 1, 3, 2)
    images = np.random.default_rng(0).integers(0, 256, (24, 64, 64, 3), dtype=np.uint8)
    np.savez(tmp_path / "mpi3d_toy.npz", images=images)
    cfg = PrepareConfig(dataset="mpi3d", path=str(tmp_path / "mpi3d_toy.npz"),
                        options={"factor_sizes": list(sizes)})  # fmt: skip
    manifest = run(cfg, tmp_path / "dataset")
    assert manifest["options"]["factor_sizes"] == list(sizes)
    assert manifest["source"] == str((tmp_path / "mpi3d_toy.npz").resolve())
    store = open_store(tmp_path / "dataset")
    np.testing.assert_array_equal(store.all_images(), images)
    assert store.ground_truth().factor_sizes == sizes


def test_failed_prepare_keeps_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "dataset"
    good = run(PrepareConfig(fraction=0.001), out)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        run(PrepareConfig(dataset="dsprites", path=str(tmp_path / "missing.npz")), out)
    data = get_dataset("dsprites_procedural")
    original = type(data).iter_chunks

    def crash_after_first(self, index=None, chunk_size=16384):
        chunks = original(self, index, chunk_size)
        yield next(chunks)
        raise RuntimeError("render failed")

    monkeypatch.setattr(type(data), "iter_chunks", crash_after_first)
    with pytest.raises(RuntimeError, match="render failed"):
        run(PrepareConfig(fraction=0.003, chunk_size=256), out)
    assert open_store(out, verify=True).manifest == good
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["dataset"]
