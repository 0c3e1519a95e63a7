"""Procedural 3D shapes: a new data set with the factor structure of Shapes3D.

This is *not* Shapes3D (Burgess & Kim 2018), whose generator was never released; it is a
numpy ray-cast scene with the same six factors, sizes, value ranges and index order
(orientation fastest), so code written for one runs on the other. Scores measured on it are
not comparable with published Shapes3D numbers.

Factors: floor_hue, wall_hue, object_hue (10 each: hues 0, 0.1, …, 0.9, coloured
HSV(h, 1, 1)), scale (8: 0.75..1.25), shape (4: cube, cylinder, sphere, capsule),
orientation (15: camera azimuth −30..30 degrees). Scene: a floor and a room corner (two walls
of finite height, sky above) seen by a pinhole camera that orbits the vertical axis; one object
centred on the floor; Lambert shading with ambient light, a hard shadow from a directional
light, a specular highlight on the object, and 2×2 supersampling.

Rendering is split in two because colour and geometry are independent: geometry
(scale, shape, orientation; 480 cases) is ray-cast once into per-pixel weights
``W [64·64, 5]`` over the colours (floor, wall, object, sky, white; each row sums to ≤ 1)
and cached, and an image is ``round(255 · W C)`` with ``C [5, 3]`` its colours in [0, 1].
Ray casting runs per (orientation, scale) for the four shapes at once, tens of milliseconds
each (about 2 s to fill the whole cache); after that an image costs one small matrix product.
"""

from __future__ import annotations

import threading

import numpy as np
from threadpoolctl import ThreadpoolController

from gmgcore.data import raycast
from gmgcore.data.base import GroundTruthData

__all__ = ["Shapes3DProcedural", "hue_to_rgb"]

RES = 64
SUPERSAMPLE = 2
ROOM = 3.2  # back walls are the planes x = ROOM and z = ROOM
WALL_HEIGHT = 2.6
CAMERA_DISTANCE = 5.0
CAMERA_HEIGHT = 1.9
TARGET = np.array([0.0, 0.75, 0.0])
FIELD_OF_VIEW = np.deg2rad(42.0)
LIGHT = np.array([-0.45, 0.8, -0.25]) / np.linalg.norm([-0.45, 0.8, -0.25])  # towards the light
AMBIENT, DIFFUSE, SPECULAR, SHININESS = 0.4, 0.6, 0.3, 24.0  # shade = A + D·max(n·l, 0) ≤ 1
SKY_RGB = np.array([0.62, 0.80, 0.96])
OBJECT_SIZE = 0.72  # half-width of the object at scale 1
# A sub-pixel ray passes within this distance of its pixel-centre ray inside the room
# (≤ 7 units away: 7 · tan(21°) / 64 · √2 ≈ 0.06).
_PIXEL_MARGIN = 0.1
_FLOOR, _WALL, _OBJECT, _SKY, _WHITE, _ROUND = range(6)  # colour channels of the weights
_BLAS: list[ThreadpoolController] = []  # created on first use (scanning libraries takes ~1 ms)


def hue_to_rgb(hue: np.ndarray) -> np.ndarray:
    """HSV(h, 1, 1) to RGB in [0, 1]: ``[n] -> [n, 3]``."""
    k = (np.asarray(hue, np.float64)[..., None] * 6 + np.array([5.0, 3.0, 1.0])) % 6
    return 1.0 - np.clip(np.minimum(k, 4 - k), 0.0, 1.0)


def _object(shape: int, o: np.ndarray, d: np.ndarray, half: float):
    """Hit of shape ``0..3`` (cube, cylinder, sphere, capsule) of half-width ``half``."""
    if shape == 0:
        return raycast.box(o, d, half, 2 * half)
    if shape == 1:
        return raycast.cylinder(o, d, half, 2 * half)
    if shape == 2:
        return raycast.sphere(o, d, half, half)
    return raycast.capsule(o, d, 0.7 * half, 2.6 * half)


def _camera(azimuth_deg: float, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Eye ``[3]`` and unit ray directions ``[(64·samples)², 3]`` (row-major, top row first)."""
    phi = np.deg2rad(225.0 + azimuth_deg)  # opposite the corner at 45 degrees
    eye = np.array([CAMERA_DISTANCE * np.cos(phi), CAMERA_HEIGHT, CAMERA_DISTANCE * np.sin(phi)])
    forward = (TARGET - eye) / np.linalg.norm(TARGET - eye)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    n = RES * samples
    grid = ((np.arange(n) + 0.5) / n * 2 - 1) * np.tan(FIELD_OF_VIEW / 2)
    u, v = np.meshgrid(grid, -grid)
    d = forward + u[..., None] * right + v[..., None] * up
    return eye, (d / np.linalg.norm(d, axis=-1, keepdims=True)).reshape(-1, 3)


def _plane(o: np.ndarray, d: np.ndarray, axis: int, offset: float, sign: float) -> np.ndarray:
    """Distance to the plane ``x_axis = offset`` for rays moving with ``sign`` along the axis."""
    moving = sign * d[:, axis] > 1e-9
    return np.where(moving, (offset - o[axis]) / np.where(moving, d[:, axis], 1.0), np.inf)


def _bounding_hits(o: np.ndarray, d: np.ndarray, half: float, margin: float = 0.0) -> np.ndarray:
    """Rays ``[r]`` that meet the box ``[−h, h] × [0, 2.6 h] × [−h, h]`` (holding every shape)
    grown by ``margin`` on every side."""
    d = np.broadcast_to(d, np.broadcast_shapes(np.shape(o), d.shape))
    t, _ = raycast.box(o, d, half + margin, 2.6 * half + margin, bottom=-margin)
    return np.isfinite(t)


def _background(azimuth_deg: float) -> dict[str, np.ndarray]:
    """Floor, walls and sky seen by the camera, per ray, and their pixel average.

    Returns the eye ``[3]``, directions ``d [R, 3]``, distance ``t [R]``, surface ``label [R]``,
    hit ``point [R, 3]``, shaded colour weights ``weights [R, 5]``, the ``pixel [R]`` each ray
    belongs to and the supersampled image ``image [64·64, 5]``.
    """
    eye, d = _camera(azimuth_deg, SUPERSAMPLE)
    t_floor = _plane(eye, d, 1, 0.0, -1.0)
    t_x, t_z = _plane(eye, d, 0, ROOM, 1.0), _plane(eye, d, 2, ROOM, 1.0)
    t_wall = np.minimum(t_x, t_z)
    t_wall = np.where(eye[1] + t_wall * d[:, 1] < WALL_HEIGHT, t_wall, np.inf)
    floor = t_floor <= t_wall
    t = np.where(floor, t_floor, t_wall)
    label = np.where(np.isfinite(t), np.where(floor, _FLOOR, _WALL), _SKY)
    normal = np.where(floor[:, None], [0.0, 1.0, 0.0], np.where((t_x < t_z)[:, None],
                      [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]))  # fmt: skip
    shade = AMBIENT + DIFFUSE * np.clip(normal @ LIGHT, 0.0, None)
    weights = np.zeros((len(d), 5))
    weights[np.arange(len(d)), label] = np.where(label == _SKY, 1.0, shade)
    n = RES * SUPERSAMPLE
    pixel = ((np.arange(n) // SUPERSAMPLE)[:, None] * RES + np.arange(n) // SUPERSAMPLE).ravel()
    rays_of_pixel = np.argsort(pixel, kind="stable").reshape(RES * RES, SUPERSAMPLE**2)
    image = weights.reshape(RES, SUPERSAMPLE, RES, SUPERSAMPLE, 5).mean(axis=(1, 3))
    return {
        "eye": eye,
        "d": d,
        "t": t,
        "label": label,
        "point": eye + np.where(np.isfinite(t), t, 0.0)[:, None] * d,
        "weights": weights,
        "lit": np.flatnonzero((label != _SKY) & (shade > AMBIENT)),
        "pixel": pixel,
        "rays_of_pixel": rays_of_pixel,
        "pixel_d": _camera(azimuth_deg, 1)[1],
        "image": image.reshape(RES * RES, 5),
    }


def _geometry(bg: dict[str, np.ndarray], half: float) -> np.ndarray:
    """Colour weights float32 ``[4, 64·64, 6]`` of the four shapes for one camera and size
    (floor, wall, object, sky, white, and a constant 1 that carries the rounding offset).

    Only rays near the object (primary rays through its bounding box, and floor or wall
    points whose light ray crosses it) are traced again; their change is added to the
    background image pixel by pixel.
    """
    d, eye = bg["d"], bg["eye"]
    # pixel-centre rays find the candidate pixels; the margin covers the sub-pixel offsets
    pixels = np.flatnonzero(_bounding_hits(eye, bg["pixel_d"], half, _PIXEL_MARGIN))
    primary = np.sort(bg["rays_of_pixel"][pixels].ravel())
    lit = bg["lit"]
    shadow = lit[_bounding_hits(bg["point"][lit], LIGHT, half)]
    mask = np.zeros(len(d), bool)
    mask[primary] = True
    mask[shadow] = True
    touched = np.flatnonzero(mask)
    position = np.cumsum(mask) - 1
    local_primary, local_shadow = position[primary], position[shadow]
    base = bg["weights"][touched]
    pixel = bg["pixel"][touched]
    p_shadow = bg["point"][shadow]
    to_light = np.broadcast_to(LIGHT, p_shadow.shape)
    out = np.empty((4, RES * RES, 6), np.float32)
    out[:, :, _ROUND] = 1.0
    for shape in range(4):
        w = base.copy()
        t_block, _ = _object(shape, p_shadow, to_light, half)
        blocked = local_shadow[np.isfinite(t_block)]
        w[blocked, bg["label"][touched[blocked]]] = AMBIENT
        t_obj, normal = _object(shape, eye, d[primary], half)
        hit = t_obj < bg["t"][primary]
        idx, normal = local_primary[hit], normal[hit]
        halfway = LIGHT - d[primary[hit]]
        halfway /= np.linalg.norm(halfway, axis=1, keepdims=True)
        w[idx] = 0.0
        # highlight σ blends towards white, so every pixel's weights sum to at most 1
        sigma = SPECULAR * np.clip(np.einsum("ij,ij->i", normal, halfway), 0.0, None) ** SHININESS
        shade = AMBIENT + DIFFUSE * np.clip(normal @ LIGHT, 0.0, None)
        w[idx, _OBJECT] = (1.0 - sigma) * shade
        w[idx, _WHITE] = sigma
        delta = (w - base) / SUPERSAMPLE**2
        slots = (pixel[:, None] * 5 + np.arange(5)).ravel()
        change = np.bincount(slots, delta.ravel(), minlength=RES * RES * 5)
        out[shape, :, :5] = bg["image"] + change.reshape(RES * RES, 5)
    return out


class Shapes3DProcedural(GroundTruthData):
    """Procedural 3D shapes with Shapes3D's factors (see the module docstring); colour images."""

    name = "shapes3d_procedural"
    factor_names = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
    factor_sizes = (10, 10, 10, 8, 4, 15)
    factor_values = (
        np.linspace(0.0, 0.9, 10),
        np.linspace(0.0, 0.9, 10),
        np.linspace(0.0, 0.9, 10),
        np.linspace(0.75, 1.25, 8),
        np.arange(4.0),
        np.linspace(-30.0, 30.0, 15),
    )
    observation_shape = (64, 64, 3)
    shape_names = ("cube", "cylinder", "sphere", "capsule")

    def __init__(self) -> None:
        self._backgrounds: dict[int, dict[str, np.ndarray]] = {}  # orientation -> rays
        self._weights: dict[tuple[int, int], np.ndarray] = {}  # (orientation, scale) -> weights
        self._lock = threading.Lock()
        self._palette = hue_to_rgb(self.factor_values[0]).astype(np.float32) * 255  # [10, 3]

    def geometry_weights(self, orientation: int, scale: int) -> np.ndarray:
        """Cached colour weights float32 ``[4 shapes, 64·64, 6]`` of one camera and size."""
        key = (int(orientation), int(scale))
        with self._lock:
            if key not in self._weights:
                if key[0] not in self._backgrounds:
                    azimuth = float(self.factor_values[5][key[0]])
                    self._backgrounds[key[0]] = _background(azimuth)
                half = OBJECT_SIZE * float(self.factor_values[3][key[1]])
                self._weights[key] = _geometry(self._backgrounds[key[0]], half)
                if len(self._weights) == 8 * 15:
                    self._backgrounds.clear()  # every geometry is cached; rays are not needed
            return self._weights[key]

    def _render(self, classes: np.ndarray) -> np.ndarray:
        """Pixels ``W C`` per group of images sharing a geometry: one matrix product each."""
        n = len(classes)
        colours = np.empty((n, 3, 6), np.float32)  # [image, rgb, surface]
        colours[:, :, _FLOOR] = self._palette[classes[:, 0]]
        colours[:, :, _WALL] = self._palette[classes[:, 1]]
        colours[:, :, _OBJECT] = self._palette[classes[:, 2]]
        colours[:, :, _SKY] = SKY_RGB * 255
        colours[:, :, _WHITE] = 255.0
        colours[:, :, _ROUND] = 0.5  # weights sum to ≤ 1, so W C + 0.5 < 256 casts to uint8
        out = np.empty((n, RES * RES, 3), np.uint8)
        group = (classes[:, 5] * 8 + classes[:, 3]) * 4 + classes[:, 4]
        order = np.argsort(group, kind="stable")
        bounds = np.flatnonzero(np.diff(group[order])) + 1
        # the products are tiny (inner size 5): threads only add overhead, so BLAS uses one
        if not _BLAS:
            _BLAS.append(ThreadpoolController())
        with _BLAS[0].limit(limits=1, user_api="blas"):
            for sel in np.split(order, bounds):
                key = group[sel[0]]
                weights = self.geometry_weights(key // 32, (key // 4) % 8)[key % 4]  # [P, 6]
                pixels = colours[sel].reshape(-1, 6) @ weights.T  # [m * 3, P]
                block = np.empty((len(sel), RES * RES, 3), np.uint8)
                rgb_last = pixels.reshape(len(sel), 3, -1).transpose(0, 2, 1)
                np.copyto(block, rgb_last, casting="unsafe")
                out[sel] = block
        return out.reshape(n, RES, RES, 3)
