"""The embed and evaluate stages on a tiny store and an untrained MLP VAE in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError

from gmgcore import metrics as gm
from gmgcore.models import build_model, images_to_tensor
from stages import embed, evaluate
from stages.modelio import save_model
from stages.store import write_store

NAMES = ("shade", "row", "col")
SIZES = (3, 4, 5)


def render(classes: np.ndarray) -> np.ndarray:
    """A bright square whose shade, row and column are the three factors: uint8 [n, 64, 64]."""
    out = np.zeros((classes.shape[0], 64, 64), dtype=np.uint8)
    for i, (shade, row, col) in enumerate(classes):
        out[i, 12 * row + 4 : 12 * row + 14, 12 * col + 2 : 12 * col + 12] = 85 * (shade + 1)
    return out


class SquareData:
    """Ground truth of ``render`` on the full grid, as the sampling-based scores need it."""

    factor_sizes = SIZES

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(0, s, size=n) for s in SIZES], axis=1)

    def images(self, classes: np.ndarray) -> np.ndarray:
        return render(classes)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    grid = np.stack(np.unravel_index(np.arange(60), SIZES), axis=1).astype(np.int64)
    write_store(root / "dataset", render(grid), grid, NAMES, SIZES, "squares", {})
    torch.manual_seed(0)
    model = build_model(
        {"architecture": "mlp", "observation_shape": [64, 64], "latent_dim": 4, "hidden": [8]}
    )
    save_model(root / "model.pt", model.eval())
    embed.run(embed.EmbedConfig(), root / "dataset", root / "model.pt", root / "emb.parquet")
    return {"root": root, "data": root / "dataset", "model": root / "model.pt",
            "emb": root / "emb.parquet", "grid": grid, "net": model}  # fmt: skip


def test_embed_writes_means_logvars_and_factors(files) -> None:
    table = pq.read_table(files["emb"])
    expected = [f"mu_{i}" for i in range(4)] + [f"logvar_{i}" for i in range(4)] + list(NAMES)
    assert table.column_names == expected
    frame = table.to_pandas()
    np.testing.assert_array_equal(frame[list(NAMES)].to_numpy(), files["grid"])
    with torch.no_grad():
        mu, logvar = files["net"].encode(images_to_tensor(render(files["grid"])))
    np.testing.assert_allclose(frame[expected[:4]].to_numpy(), mu.numpy(), atol=1e-6)
    np.testing.assert_allclose(frame[expected[4:8]].to_numpy(), logvar.numpy(), atol=1e-6)


def test_embed_seeded_sample_is_sorted_distinct_and_reproducible(files, tmp_path) -> None:
    cfg = embed.EmbedConfig(num_samples=25, seed=3, batch_size=7)
    embed.run(cfg, files["data"], files["model"], tmp_path / "a.parquet")
    embed.run(cfg, files["data"], files["model"], tmp_path / "b.parquet")
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(a, b)
    full = pd.read_parquet(files["emb"])
    rows = embed.select_indices(60, 25, 3)
    assert len(np.unique(rows)) == 25 and (np.diff(rows) > 0).all()
    pd.testing.assert_frame_equal(a, full.iloc[rows].reset_index(drop=True), atol=1e-6)


def test_embed_rejects_more_samples_than_images(files, tmp_path) -> None:
    with pytest.raises(ValueError, match="embed.num_samples=61 exceeds the 60 images"):
        embed.run(embed.EmbedConfig(num_samples=61), files["data"], files["model"], tmp_path / "x")


SMALL = dict(num_train=100, num_test=50, dci_backend="exact")


def test_evaluate_writes_flat_metrics_and_importance(files, tmp_path) -> None:
    cfg = evaluate.EvaluateConfig(**SMALL)
    out, imp = tmp_path / "metrics.json", tmp_path / "imp.parquet"
    scores = evaluate.run(cfg, files["emb"], files["data"], files["model"], out, imp)
    assert json.loads(out.read_text()) == scores
    expected = {f"dci.{k}" for k in gm.DCIResult.score_keys} | {"mig.mig", "sap.sap"}
    expected |= {f"modularity_explicitness.{k}" for k in gm.ModularityExplicitnessResult.score_keys}
    assert set(scores) == expected
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    frame = pd.read_parquet(imp)
    assert list(frame.index) == ["z0", "z1", "z2", "z3"] and list(frame.columns) == list(NAMES)
    np.testing.assert_allclose(frame.sum(axis=0).to_numpy(), 1.0)
    # The same split through the library gives the same numbers.
    codes, factors = evaluate.read_embeddings(files["emb"], NAMES)
    rng = np.random.default_rng(np.random.SeedSequence(0).spawn(7)[6])
    train, _ = evaluate.split_rows(len(codes), cfg, rng)
    assert scores["mig.mig"] == pytest.approx(gm.mig(codes[train], factors[train])["mig"])


def test_evaluate_rerun_is_byte_identical_and_metric_streams_are_independent(
    files, tmp_path
) -> None:
    out, imp = tmp_path / "metrics.json", tmp_path / "imp.parquet"
    both = evaluate.EvaluateConfig(metrics=["sap", "mig"], num_train=200, num_test=100)
    scores = evaluate.run(both, files["emb"], files["data"], files["model"], out, imp)
    first = out.read_bytes()
    evaluate.run(both, files["emb"], files["data"], files["model"], out, imp)
    assert out.read_bytes() == first
    alone = evaluate.EvaluateConfig(metrics=["mig"], num_train=200, num_test=100)
    only = evaluate.run(alone, files["emb"], files["data"], files["model"], out, imp)
    assert only["mig.mig"] == scores["mig.mig"]


def test_evaluate_sampling_scores_use_the_model(files, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(evaluate, "ground_truth", lambda manifest: SquareData())
    cfg = evaluate.EvaluateConfig(
        metrics=["factor_vae", "beta_vae"],
        sampling_batch_size=8,
        sampling_num_train=40,
        sampling_num_eval=20,
        factor_vae_num_variance=200,
        factor_vae_prune_threshold=0.0,
    )
    imp = tmp_path / "imp.parquet"
    scores = evaluate.run(
        cfg, files["emb"], files["data"], files["model"], tmp_path / "m.json", imp
    )
    assert set(scores) == {
        "factor_vae.train_accuracy", "factor_vae.eval_accuracy", "factor_vae.num_active_dims",
        "beta_vae.train_accuracy", "beta_vae.eval_accuracy",
    }  # fmt: skip
    assert scores["factor_vae.num_active_dims"] == 4.0
    assert pd.read_parquet(imp).empty


def test_evaluate_disjoint_split_needs_enough_rows(files, tmp_path) -> None:
    cfg = evaluate.EvaluateConfig(metrics=["mig"], split="disjoint", num_train=50, num_test=20)
    with pytest.raises(ValueError, match="needs num_train \\+ num_test = 70 rows"):
        evaluate.run(
            cfg, files["emb"], files["data"], files["model"], tmp_path / "m", tmp_path / "i"
        )


def test_evaluate_config_rejects_unknown_metric_and_backend() -> None:
    with pytest.raises(ValidationError):
        evaluate.EvaluateConfig(metrics=["irs"])
    with pytest.raises(ValidationError):
        evaluate.EvaluateConfig(dci_backend="xgboost")


def test_read_embeddings_names_missing_factor(files) -> None:
    with pytest.raises(ValueError, match="missing factor columns \\['hue'\\]"):
        evaluate.read_embeddings(files["emb"], ("hue",))


def test_sampling_scores_rebuild_the_ground_truth_from_the_manifest(files, tmp_path) -> None:
    # A store of real procedural dSprites images: FactorVAE must rebuild the data set from the
    # manifest (dataset + options), render fresh images and encode them with the model.
    from gmgcore.data import get_dataset

    dsprites = get_dataset("dsprites_procedural")
    classes = dsprites.sample_factors(40, np.random.default_rng(0))
    write_store(
        tmp_path / "ds", dsprites.images(classes), classes, dsprites.factor_names,
        dsprites.factor_sizes, "dsprites_procedural", dsprites.options,
    )  # fmt: skip
    embed.run(embed.EmbedConfig(), tmp_path / "ds", files["model"], tmp_path / "e.parquet")
    cfg = evaluate.EvaluateConfig(
        metrics=["factor_vae"],
        sampling_batch_size=4,
        sampling_num_train=30,
        sampling_num_eval=10,
        factor_vae_num_variance=100,
        factor_vae_prune_threshold=0.0,
    )
    with pytest.warns(gm.ConstantFactorWarning, match="factor 0"):
        scores = evaluate.run(
            cfg, tmp_path / "e.parquet", tmp_path / "ds", files["model"],
            tmp_path / "m.json", tmp_path / "i.parquet",
        )  # fmt: skip
    assert scores["factor_vae.num_active_dims"] == 4.0
    assert 0.0 < scores["factor_vae.train_accuracy"] <= 1.0
