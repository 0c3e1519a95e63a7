"""Readers for the published array files: dSprites (.npz / .hdf5), Shapes3D (.h5), MPI3D (.npz).

Each returns an :class:`~gmgcore.data.base.ArrayGroundTruthData` in the file's grid order.
Factor sizes come from the file's labels (which must form a complete grid), so a file holding
a sub-grid in the same format also loads; MPI3D has no labels and takes its sizes from the
image count (the 6×6 and the older 4×4 release) or from ``factor_sizes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gmgcore.data.base import ArrayGroundTruthData
from gmgcore.data.files import check_array, grid_from_labels, npz_array, require_file

__all__ = ["load_dsprites", "load_shapes3d", "load_mpi3d"]

DSPRITES_NAMES = ("color", "shape", "scale", "orientation", "pos_x", "pos_y")
DSPRITES_HELP = (
    "Download dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz (or the .hdf5) from "
    "https://github.com/google-deepmind/dsprites-dataset and pass its path."
)
SHAPES3D_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
SHAPES3D_HELP = (
    "Download 3dshapes.h5 (about 268 MB) from https://storage.googleapis.com/3d-shapes/3dshapes.h5"
    " (see https://github.com/google-deepmind/3d-shapes) and pass its path."
)
MPI3D_NAMES = (
    "object_color",
    "object_shape",
    "object_size",
    "camera_height",
    "background_color",
    "horizontal_axis",
    "vertical_axis",
)
MPI3D_SIZES = {1_036_800: (6, 6, 2, 3, 3, 40, 40), 460_800: (4, 4, 2, 3, 3, 40, 40)}
MPI3D_HELP = (
    "Download mpi3d_toy.npz, mpi3d_realistic.npz or mpi3d_real.npz from "
    "https://storage.googleapis.com/disentanglement_dataset/Final_Dataset/ "
    "(see https://github.com/rr-learning/disentanglement_dataset) and pass its path."
)


def load_dsprites(path: str | Path) -> ArrayGroundTruthData:
    """dSprites from the published file: ``imgs`` uint8 ``[N, 64, 64]`` holding 0/1,
    ``latents_classes`` int ``[N, 6]`` and ``latents_values`` float ``[N, 6]`` (``.npz`` keys,
    or ``latents/classes`` and ``latents/values`` in the ``.hdf5``). Served as 0/255."""
    file = require_file(path, "dSprites", DSPRITES_HELP)
    if file.suffix.lower() in (".h5", ".hdf5"):
        imgs, classes, values = _dsprites_hdf5(file)
    else:
        expected = ("imgs", "latents_classes", "latents_values")
        imgs = npz_array(file, "imgs", expected)
        classes = npz_array(file, "latents_classes", expected)
        values = npz_array(file, "latents_values", expected)
    check_array(file, "imgs", imgs, (None, 64, 64), ("uint8",))
    check_array(file, "latents_classes", classes, (len(imgs), 6), ("i", "u"))
    check_array(file, "latents_values", values, (len(imgs), 6), ("f",))
    sample = np.asarray(imgs[: min(len(imgs), 256)])
    if sample.size and sample.max() > 1:
        raise ValueError(f"{file}: 'imgs' holds values up to {sample.max()}, expected 0/1")
    classes = np.asarray(classes)
    labels, _, order = grid_from_labels(file, classes, DSPRITES_NAMES)
    factor_values = _values_per_class(np.asarray(values), labels)
    return ArrayGroundTruthData(
        "dsprites", imgs, DSPRITES_NAMES, factor_values, (64, 64), {"path": str(path)},
        order=order, multiplier=255,
    )  # fmt: skip


def _dsprites_hdf5(file: Path):
    import h5py

    handle = _open_h5(file)
    missing = [k for k in ("imgs", "latents/classes", "latents/values") if k not in handle]
    if missing:
        raise ValueError(
            f"{file}: missing {missing} (expected 'imgs', 'latents/classes', 'latents/values')"
        )
    imgs = handle["imgs"]
    if not isinstance(imgs, h5py.Dataset):
        raise ValueError(f"{file}: 'imgs' is not an array")
    return imgs, handle["latents/classes"][()], handle["latents/values"][()]


def _values_per_class(values: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Physical value of each class of each factor (first row holding that class)."""
    out = []
    for j in range(classes.shape[1]):
        _, first = np.unique(classes[:, j], return_index=True)
        out.append(values[first, j].astype(np.float64))
    return tuple(out)


def _open_h5(file: Path):
    import h5py

    try:
        return h5py.File(file, "r")
    except OSError as err:
        raise ValueError(f"{file}: not a readable HDF5 file ({err})") from err


def load_shapes3d(path: str | Path, in_memory: bool = False) -> ArrayGroundTruthData:
    """Shapes3D from ``3dshapes.h5``: ``images`` uint8 ``[N, 64, 64, 3]``, ``labels`` float
    ``[N, 6]`` (physical values: hues 0..0.9, scale 0.75..1.25, shape 0..3, orientation
    −30..30). Images are read from the file on demand unless ``in_memory``."""
    import h5py

    file = require_file(path, "Shapes3D", SHAPES3D_HELP)
    handle = _open_h5(file)
    for key in ("images", "labels"):
        if key not in handle or not isinstance(handle[key], h5py.Dataset):
            raise ValueError(
                f"{file}: missing dataset '{key}' (found {sorted(handle.keys())}; "
                "expected 'images' and 'labels')"
            )
    images, labels = handle["images"], handle["labels"]
    check_array(file, "images", images, (None, 64, 64, 3), ("uint8",))
    check_array(file, "labels", labels, (images.shape[0], 6), ("f",))
    _, values, order = grid_from_labels(file, labels[()], SHAPES3D_NAMES)
    data = images[()] if in_memory else images
    options = {"path": str(path), "in_memory": in_memory}
    return ArrayGroundTruthData(
        "shapes3d", data, SHAPES3D_NAMES, values, (64, 64, 3), options, order=order
    )


def load_mpi3d(path: str | Path, factor_sizes: Sequence[int] | None = None) -> ArrayGroundTruthData:
    """MPI3D toy / realistic / real from its ``.npz``: ``images`` uint8 ``[N, 64, 64, 3]`` in
    grid order (vertical_axis fastest). Sizes: 6×6×2×3×3×40×40 when N = 1,036,800, the older
    4×4 release when N = 460,800, or ``factor_sizes`` (7 ints, product N) for other files."""
    file = require_file(path, "MPI3D", MPI3D_HELP)
    images = npz_array(file, "images", ("images",))
    check_array(file, "images", images, (None, 64, 64, 3), ("uint8",))
    n = images.shape[0]
    if factor_sizes is not None:
        sizes = tuple(int(s) for s in factor_sizes)
        if len(sizes) != 7 or math.prod(sizes) != n:
            raise ValueError(
                f"{file}: factor_sizes {sizes} must be 7 sizes whose product is the image count {n}"
            )
    elif n in MPI3D_SIZES:
        sizes = MPI3D_SIZES[n]
    else:
        raise ValueError(
            f"{file}: 'images' has {n} rows; expected 1036800 (6×6 release) or 460800 "
            "(4×4 release), or pass factor_sizes"
        )
    values = tuple(np.arange(s, dtype=np.float64) for s in sizes)
    options: dict = {"path": str(path)}
    if factor_sizes is not None:
        options["factor_sizes"] = list(sizes)
    return ArrayGroundTruthData("mpi3d", images, MPI3D_NAMES, values, (64, 64, 3), options)
