"""Procedural 3D shapes: factor structure, colours where they belong, geometry responds to its
factors, and the ray-cast primitives against closed forms."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from gmgcore.data import get_dataset, raycast
from gmgcore.data.shapes3d_procedural import hue_to_rgb


@pytest.fixture(scope="module")
def shapes():
    return get_dataset("shapes3d_procedural")


def _hue(pixel: np.ndarray) -> float:
    return colorsys.rgb_to_hsv(*(pixel / 255.0))[0]


def _hue_distance(a: float, b: float) -> float:
    return min(abs(a - b), 1 - abs(a - b))


def test_factor_structure(shapes):
    assert shapes.factor_names == (
        "floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation",
    )  # fmt: skip
    assert shapes.factor_sizes == (10, 10, 10, 8, 4, 15)
    assert shapes.num_images == 480_000
    assert shapes.observation_shape == (64, 64, 3)
    np.testing.assert_allclose(shapes.factor_values[3][[0, -1]], [0.75, 1.25])
    np.testing.assert_allclose(shapes.factor_values[5][[0, 7, 14]], [-30.0, 0.0, 30.0])
    np.testing.assert_array_equal(shapes.index_to_classes([1, 15])[:, 4:], [[0, 1], [1, 0]])


def test_hue_to_rgb_matches_colorsys():
    hues = np.linspace(0, 0.95, 20)
    expected = [colorsys.hsv_to_rgb(h, 1.0, 1.0) for h in hues]
    np.testing.assert_allclose(hue_to_rgb(hues), expected, atol=1e-12)


def test_images_are_deterministic_uint8(shapes):
    classes = shapes.sample_factors(40, np.random.default_rng(0))
    classes[:, 5] = classes[:, 5] % 3  # few cameras keep the geometry cache small
    first = shapes.images(classes)
    assert first.dtype == np.uint8 and first.shape == (40, 64, 64, 3)
    np.testing.assert_array_equal(first, shapes.images(classes[::-1])[::-1])


def _changed(shapes, base: list[int], factor: int, value: int) -> np.ndarray:
    other = list(base)
    other[factor] = value
    images = shapes.images(np.array([base, other])).astype(int)
    return np.abs(images[0] - images[1]).sum(axis=-1) > 0  # [64, 64]


def test_each_hue_colours_its_own_surface(shapes):
    base = [0, 3, 6, 4, 2, 7]  # red floor, green-ish walls, blue-ish sphere, front camera
    floor = _changed(shapes, base, 0, 5)
    wall = _changed(shapes, base, 1, 8)
    obj = _changed(shapes, base, 2, 1)
    assert floor.sum() > 500 and wall.sum() > 500 and obj.sum() > 100
    # the surfaces overlap only on anti-aliased edges
    assert (floor & wall).sum() < 64 and (floor & obj).sum() < 64 and (wall & obj).sum() < 64
    assert floor[-1].all() and not floor[0].any()  # floor at the bottom, never at the top
    assert obj[32, 32]  # the object is centred
    image = shapes.images(np.array([base]))[0]
    hues = shapes.factor_values[0]
    assert _hue_distance(_hue(image[62, 2]), hues[0]) < 0.02
    assert _hue_distance(_hue(image[10, 2]), hues[3]) < 0.02
    assert _hue_distance(_hue(image[30, 32]), hues[6]) < 0.02


@pytest.mark.parametrize("shape", [0, 1, 2, 3])
def test_object_grows_with_scale(shapes, shape):
    areas = [_changed(shapes, [0, 3, 6, s, shape, 7], 2, 1).sum() for s in (0, 3, 7)]
    assert areas[0] < areas[1] < areas[2], areas
    assert 1.5 < areas[2] / areas[0] < 4.0  # linear size ratio 1.25/0.75 squared ≈ 2.8


def test_shapes_have_distinct_silhouettes(shapes):
    masks = [_changed(shapes, [0, 3, 6, 5, k, 7], 2, 1) for k in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert (masks[a] ^ masks[b]).sum() > 20, (a, b)


def test_orientation_moves_the_camera(shapes):
    images = shapes.images(np.array([[0, 3, 6, 4, 2, k] for k in (0, 7, 14)])).astype(int)
    assert np.abs(images[0] - images[1]).sum(axis=-1).astype(bool).sum() > 200
    # the sphere looks the same from every azimuth (up to shading), so it stays centred
    for k in range(3):
        obj = _changed(shapes, [0, 3, 6, 4, 2, (0, 7, 14)[k]], 2, 1)
        cols = np.nonzero(obj)[1]
        assert abs(cols.mean() - 31.5) < 1.5


def test_raycast_sphere_and_box_closed_forms():
    o = np.array([0.0, 1.0, -5.0])
    d = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8]])
    t, n = raycast.sphere(o, d, 1.0, 1.0)
    assert t[0] == pytest.approx(4.0) and np.isinf(t[1])
    np.testing.assert_allclose(n[0], [0, 0, -1])
    t, n = raycast.box(o, d, 1.0, 2.0)
    assert t[0] == pytest.approx(4.0) and np.isinf(t[1])
    np.testing.assert_allclose(n[0], [0, 0, -1])
    t, n = raycast.cylinder(np.array([0.0, 5.0, 0.0]), np.array([[0.0, -1.0, 0.0]]), 1.0, 2.0)
    assert t[0] == pytest.approx(3.0)  # lands on the top cap
    np.testing.assert_allclose(n[0], [0, 1, 0])
    t, _ = raycast.capsule(np.array([0.0, 5.0, 0.0]), np.array([[0.0, -1.0, 0.0]]), 0.5, 2.0)
    assert t[0] == pytest.approx(3.0)  # the top of the upper hemisphere at y = 2
