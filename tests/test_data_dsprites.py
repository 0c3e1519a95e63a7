"""Procedural dSprites against real frames (IoU on the GIF fixture) and geometric invariants."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from gmgcore.data import get_dataset

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "dsprites"


@pytest.fixture(scope="module")
def dsprites():
    return get_dataset("dsprites_procedural")


def _fixture_frames() -> tuple[np.ndarray, np.ndarray]:
    """Real frames bool ``[320, 64, 64]`` and their classes int ``[320, 6]``."""
    from PIL import Image, ImageSequence

    if not (FIXTURE / "dsprites.gif").is_file() or not (FIXTURE / "frames.csv").is_file():
        pytest.skip(f"dSprites fixture not found at {FIXTURE} (shared/ sits beside the repo)")
    with Image.open(FIXTURE / "dsprites.gif") as gif:
        frames = [np.asarray(f.convert("L")) > 128 for f in ImageSequence.Iterator(gif)]
    with open(FIXTURE / "frames.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    keys = ("shape", "scale", "orientation", "pos_x", "pos_y")
    classes = np.array([[0] + [int(r[k]) for k in keys] for r in rows])
    return np.stack(frames), classes


def test_matches_real_frames(dsprites):
    frames, classes = _fixture_frames()
    assert frames.shape == (320, 64, 64) and len(classes) == 320
    rendered = dsprites.images(classes) > 0
    inter = (rendered & frames).sum(axis=(1, 2))
    union = (rendered | frames).sum(axis=(1, 2))
    iou = inter / np.maximum(union, 1)
    names = dsprites.shape_names
    per_shape = {name: iou[classes[:, 1] == k].mean() for k, name in enumerate(names)}
    assert per_shape["square"] >= 0.99, per_shape
    assert per_shape["ellipse"] >= 0.99, per_shape
    assert per_shape["heart"] >= 0.98, per_shape
    assert iou.min() >= 0.9, f"worst frame {int(np.argmin(iou))} has IoU {iou.min():.3f}"


def test_factor_structure_matches_published_file(dsprites):
    assert dsprites.factor_names == ("color", "shape", "scale", "orientation", "pos_x", "pos_y")
    assert dsprites.factor_sizes == (1, 3, 6, 40, 32, 32)
    assert dsprites.num_images == 737_280
    assert dsprites.observation_shape == (64, 64)
    np.testing.assert_allclose(dsprites.factor_values[2], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    np.testing.assert_allclose(dsprites.factor_values[3][[0, 39]], [0.0, 2 * np.pi])
    np.testing.assert_allclose(np.diff(dsprites.factor_values[4]), 1 / 31)


def test_index_order_pos_y_fastest(dsprites):
    # index = classes · bases with bases = reversed cumprod of (1, 3, 6, 40, 32, 32)
    bases = np.array([737280, 245760, 40960, 1024, 32, 1])
    rng = np.random.default_rng(0)
    classes = dsprites.sample_factors(500, rng)
    index = dsprites.classes_to_index(classes)
    np.testing.assert_array_equal(index, classes @ bases)
    np.testing.assert_array_equal(dsprites.index_to_classes(index), classes)
    np.testing.assert_array_equal(dsprites.index_to_classes([1, 32])[:, 4:], [[0, 1], [1, 0]])


def test_images_are_binary_and_nonempty(dsprites):
    classes = dsprites.sample_factors(300, np.random.default_rng(1))
    images = dsprites.images(classes)
    assert images.dtype == np.uint8 and images.shape == (300, 64, 64)
    assert set(np.unique(images)) <= {0, 255}
    assert (images.reshape(300, -1).max(axis=1) == 255).all()


def _grid_at_left(shape: int) -> np.ndarray:
    """Classes of every scale × orientation × pos_y at pos_x = 0: ``[6·40·32, 6]``."""
    s, k, y = np.meshgrid(np.arange(6), np.arange(40), np.arange(32), indexing="ij")
    n = s.size
    return np.stack([np.zeros(n), np.full(n, shape), s.ravel(), k.ravel(), np.zeros(n),
                     y.ravel()], axis=1).astype(np.int64)  # fmt: skip


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_mirror_symmetry_and_duplicate_orientation(dsprites, shape):
    """At pos_x = 0 (centre x = 16) frame(k) mirrored about x = 16 equals frame(39 − k), as
    in the real data; orientation 39 (2π) duplicates orientation 0."""
    images = dsprites.images(_grid_at_left(shape)).reshape(6, 40, 32, 64, 64)
    assert (images[..., 32:] == 0).all()
    mirrored = images[..., :32][..., ::-1]
    np.testing.assert_array_equal(mirrored, images[:, ::-1, :, :, :32])
    np.testing.assert_array_equal(images[:, 0], images[:, 39])


def test_position_moves_the_sprite_by_32_pixels(dsprites):
    classes = np.array([[0, s, 5, 7, x, y] for s in range(3) for x, y in ((0, 0), (31, 31))])
    images = dsprites.images(classes).astype(float)
    rows, cols = np.mgrid[:64, :64]
    cy = (images * rows).sum(axis=(1, 2)) / images.sum(axis=(1, 2))
    cx = (images * cols).sum(axis=(1, 2)) / images.sum(axis=(1, 2))
    np.testing.assert_allclose(cx[1::2] - cx[::2], 32.0, atol=0.5)
    np.testing.assert_allclose(cy[1::2] - cy[::2], 32.0, atol=0.5)
    np.testing.assert_array_equal(images[0].sum(), images[1].sum())  # square: pure translation


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_area_grows_with_scale_as_scale_squared(dsprites, shape):
    classes = np.array([[0, shape, s, 0, 16, 16] for s in range(6)])
    area = (dsprites.images(classes) > 0).sum(axis=(1, 2)).astype(float)
    assert (np.diff(area) > 0).all(), area
    scale = dsprites.factor_values[2]
    ratio = area / scale**2
    assert ratio.max() / ratio.min() < 1.25, ratio  # pixel area ∝ s² up to rasterization


def test_square_side_is_19_2_scale_pixels(dsprites):
    classes = np.array([[0, 0, s, 0, 0, 0] for s in range(6)])
    sides = np.sqrt((dsprites.images(classes) > 0).sum(axis=(1, 2)))
    np.testing.assert_allclose(sides, [10, 12, 14, 16, 18, 20])


def test_rotation_is_counter_clockwise(dsprites):
    """The heart's tip points down at k = 0 and right after ten steps (≈ 92°)."""
    images = dsprites.images(np.array([[0, 2, 5, 0, 16, 16], [0, 2, 5, 10, 16, 16]])) > 0
    rows, cols = np.nonzero(images[0])
    assert rows.max() - rows.mean() > rows.mean() - rows.min()  # the long end is at the bottom
    rows, cols = np.nonzero(images[1])
    assert cols.max() - cols.mean() > cols.mean() - cols.min()  # ... and now at the right


def test_sample_factors_is_seeded_and_uniform(dsprites):
    a = dsprites.sample_factors(60_000, np.random.default_rng(3))
    b = dsprites.sample_factors(60_000, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64 and a.shape == (60_000, 6)
    for j, size in enumerate(dsprites.factor_sizes):
        counts = np.bincount(a[:, j], minlength=size)
        assert len(counts) == size
        expected = 60_000 / size
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < size + 6 * np.sqrt(2 * size) + 10, (j, chi2)


def test_bad_classes_are_rejected(dsprites):
    with pytest.raises(ValueError, match="shape \\[n, 6\\]"):
        dsprites.images(np.zeros((2, 5), int))
    with pytest.raises(ValueError, match="'orientation' class 40"):
        dsprites.images(np.array([[0, 0, 0, 40, 0, 0]]))
    with pytest.raises(ValueError, match="integers"):
        dsprites.images(np.zeros((1, 6)))
    assert dsprites.images(np.zeros((0, 6), int)).shape == (0, 64, 64)
