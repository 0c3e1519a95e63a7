"""Batched ray–primitive intersections in numpy (y up), for the procedural 3D scenes.

Every function takes ray origins ``o`` ``[r, 3]`` (or one origin ``[3]``) and unit directions
``d`` ``[r, 3]`` and returns ``(t, n)``: the distance to the first hit in front of the origin,
float64 ``[r]`` (``inf`` on a miss), and the outward unit normal there ``[r, 3]`` (arbitrary on
a miss). Primitives stand on the floor, centred on the vertical axis ``x = z = 0``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["box", "capsule", "cylinder", "sphere", "nearest"]

_T_MIN = 1e-6


def _first_positive(t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Smallest root above ``_T_MIN`` of a pair ``t0 <= t1`` (``inf`` when none)."""
    return np.where(t0 > _T_MIN, t0, np.where(t1 > _T_MIN, t1, np.inf))


def sphere(o: np.ndarray, d: np.ndarray, height: float, radius: float):
    """Sphere of ``radius`` centred at ``(0, height, 0)``: roots of ``|o + t d − c|² = r²``."""
    oc = np.broadcast_to(o, d.shape) - np.array([0.0, height, 0.0])
    b = np.einsum("ij,ij->i", oc, d)
    disc = b * b - (np.einsum("ij,ij->i", oc, oc) - radius * radius)
    root = np.sqrt(np.maximum(disc, 0.0))
    t = np.where(disc >= 0, _first_positive(-b - root, -b + root), np.inf)
    normal = (oc + np.where(np.isfinite(t), t, 0.0)[:, None] * d) / radius
    return t, normal


def _side(o: np.ndarray, d: np.ndarray, radius: float, y0: float, y1: float):
    """Lateral surface ``x² + z² = r²``, ``y0 <= y <= y1`` of a vertical cylinder."""
    o = np.broadcast_to(o, d.shape)
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 2] * d[:, 2]
    c = o[:, 0] ** 2 + o[:, 2] ** 2 - radius * radius
    a_safe = np.where(a < 1e-12, 1e-12, a)
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t = np.full(len(d), np.inf)
    for cand in ((-b + root) / a_safe, (-b - root) / a_safe):  # nearer root written last
        y = o[:, 1] + cand * d[:, 1]
        ok = (disc >= 0) & (a >= 1e-12) & (cand > _T_MIN) & (y >= y0) & (y <= y1)
        t = np.where(ok, cand, t)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    normal = np.stack([p[:, 0] / radius, np.zeros(len(d)), p[:, 2] / radius], axis=1)
    return t, normal


def _disk(o: np.ndarray, d: np.ndarray, radius: float, height: float):
    """Upward-facing disk ``x² + z² <= r²`` in the plane ``y = height``."""
    o = np.broadcast_to(o, d.shape)
    dy = np.where(np.abs(d[:, 1]) < 1e-12, 1e-12, d[:, 1])
    t = (height - o[:, 1]) / dy
    px = o[:, 0] + t * d[:, 0]
    pz = o[:, 2] + t * d[:, 2]
    t = np.where((t > _T_MIN) & (px * px + pz * pz <= radius * radius), t, np.inf)
    normal = np.broadcast_to(np.array([0.0, 1.0, 0.0]), d.shape)
    return t, normal


def nearest(*hits: tuple[np.ndarray, np.ndarray]):
    """Combine ``(t, n)`` hits of several surfaces into the nearest one per ray."""
    t, n = hits[0]
    for t2, n2 in hits[1:]:
        closer = t2 < t
        t = np.where(closer, t2, t)
        n = np.where(closer[:, None], n2, n)
    return t, n


def box(o: np.ndarray, d: np.ndarray, half: float, height: float, bottom: float = 0.0):
    """Axis-aligned box ``[−h, h] × [bottom, height] × [−h, h]`` by the slab test."""
    o = np.broadcast_to(o, d.shape)
    t_near = np.full(len(d), -np.inf)
    t_far = np.full(len(d), np.inf)
    axis = np.zeros(len(d), np.intp)
    for k, (low, high) in enumerate(((-half, half), (bottom, height), (-half, half))):
        dk = d[:, k]
        inv = 1.0 / np.where(np.abs(dk) < 1e-12, 1e-12, dk)
        t1, t2 = (low - o[:, k]) * inv, (high - o[:, k]) * inv
        near = np.minimum(t1, t2)
        axis = np.where(near > t_near, k, axis)
        t_near = np.maximum(t_near, near)
        t_far = np.minimum(t_far, np.maximum(t1, t2))
    t = np.where((t_near <= t_far) & (t_near > _T_MIN), t_near, np.inf)
    normal = np.zeros(d.shape)
    rows = np.arange(len(d))
    normal[rows, axis] = -np.sign(d[rows, axis])
    return t, normal


def cylinder(o: np.ndarray, d: np.ndarray, radius: float, height: float):
    """Vertical cylinder of ``radius`` from the floor to ``height`` with a top cap."""
    return nearest(_side(o, d, radius, 0.0, height), _disk(o, d, radius, height))


def capsule(o: np.ndarray, d: np.ndarray, radius: float, height: float):
    """Vertical capsule (a cylinder with hemispherical ends) from the floor to ``height``."""
    y0, y1 = radius, height - radius
    return nearest(_side(o, d, radius, y0, y1), sphere(o, d, y0, radius), sphere(o, d, y1, radius))
