"""SmallNORB (LeCun, Huang, Bottou 2004) from its "binary matrix" files, one split at a time.

Files (``.mat`` or gzipped ``.mat.gz``; not MATLAB files despite the name):
``smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat`` and
``smallnorb-5x01235x9x18x6x2x96x96-testing-…``. ``dat`` is uint8 ``[N, 2, 96, 96]`` (stereo
pairs), ``cat`` int32 ``[N]`` (category), ``info`` int32 ``[N, 4]`` (instance, elevation,
azimuth 0, 2, …, 34, lighting). Factor values are served in degrees for elevation
(30..70) and azimuth (0..340). Each split is a full grid of category (5) × instance (5 of
that split) × elevation (9) × azimuth (18) × lighting (6) = 24,300 images, as in disent;
the first camera is used and resized to ``size`` (Lanczos).

Binary matrix format: int32 magic (0x1E3D4C55 uint8, 0x1E3D4C54 int32, 0x1E3D4C56 int16,
0x1E3D4C51 float32, 0x1E3D4C53 float64), int32 ndim, ``max(3, ndim)`` int32 dims (unused
ones are 1), then the data, little-endian, last dimension fastest.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from gmgcore.data.base import ArrayGroundTruthData
from gmgcore.data.files import grid_from_labels, resize_images

__all__ = ["load_smallnorb", "read_binary_matrix", "write_binary_matrix"]

NAMES = ("category", "instance", "elevation", "azimuth", "lighting")
HELP = (
    "Download the six smallnorb-*.mat.gz files from https://cs.nyu.edu/~ylclab/data/"
    "norb-v1.0-small/ into one folder and pass the folder as path."
)
_MAGIC = {
    0x1E3D4C55: np.dtype("<u1"),
    0x1E3D4C54: np.dtype("<i4"),
    0x1E3D4C56: np.dtype("<i2"),
    0x1E3D4C51: np.dtype("<f4"),
    0x1E3D4C53: np.dtype("<f8"),
}
_PREFIX = {
    "train": "smallnorb-5x46789x9x18x6x2x96x96-training",
    "test": "smallnorb-5x01235x9x18x6x2x96x96-testing",
}


def read_binary_matrix(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) binary matrix file into an array of its stored shape."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err})") from err
    if len(raw) < 20:
        raise ValueError(f"{path}: too short for a binary matrix header ({len(raw)} bytes)")
    magic, ndim = np.frombuffer(raw, "<i4", count=2)
    if int(magic) not in _MAGIC:
        raise ValueError(
            f"{path}: unknown binary matrix magic {int(magic):#x} "
            f"(expected one of {', '.join(hex(m) for m in _MAGIC)})"
        )
    if not 1 <= ndim <= 16:
        raise ValueError(f"{path}: binary matrix header gives {int(ndim)} dimensions")
    stored = max(3, int(ndim))
    dims = tuple(int(x) for x in np.frombuffer(raw, "<i4", count=stored, offset=8)[:ndim])
    dtype = _MAGIC[int(magic)]
    offset = 8 + 4 * stored
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(
            f"{path}: binary matrix of shape {dims} needs {expected} data bytes, "
            f"found {len(raw) - offset}"
        )
    return np.frombuffer(raw, dtype, offset=offset).reshape(dims)


def write_binary_matrix(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write ``array`` (uint8, int32, int16, float32 or float64) as a binary matrix file."""
    dtype = np.dtype(array.dtype).newbyteorder("<")
    magic = {v: k for k, v in _MAGIC.items()}[dtype]
    dims = list(array.shape) + [1] * max(0, 3 - array.ndim)
    header = np.array([magic, array.ndim, *dims], "<i4").tobytes()
    data = header + np.ascontiguousarray(array, dtype).tobytes()
    path.write_bytes(gzip.compress(data, compresslevel=1) if compress else data)


def _split_file(folder: Path, split: str, kind: str) -> Path:
    name = f"{_PREFIX[split]}-{kind}.mat"
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{folder / name}(.gz): SmallNORB file not found. {HELP}")


def _check(path: Path, array: np.ndarray, shape: tuple[int | None, ...], kind: str) -> None:
    ok = array.ndim == len(shape) and all(
        s is None or s == g for s, g in zip(shape, array.shape, strict=True)
    )
    if not ok or array.dtype.kind != kind:
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(
            f"{path}: matrix has shape {array.shape} and dtype {array.dtype}, expected shape "
            f"{want} of {'uint8' if kind == 'u' else 'int32'}"
        )


def load_smallnorb(path: str | Path, split: str = "train", size: int = 64) -> ArrayGroundTruthData:
    """SmallNORB ``split`` ("train" or "test") from the folder ``path``; grey ``[size, size]``."""
    if split not in _PREFIX:
        raise ValueError(f"smallnorb: split must be 'train' or 'test', got {split!r}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: SmallNORB folder not found. {HELP}")
    files = {kind: _split_file(folder, split, kind) for kind in ("dat", "cat", "info")}
    dat, cat, info = (read_binary_matrix(files[k]) for k in ("dat", "cat", "info"))
    _check(files["dat"], dat, (None, 2, None, None), "u")
    if cat.ndim == 2 and cat.shape[1] == 1:  # some writers store [N, 1]
        cat = cat[:, 0]
    _check(files["cat"], cat, (len(dat),), "i")
    _check(files["info"], info, (len(dat), 4), "i")
    labels = np.column_stack([cat, info]).astype(np.int64)
    _, raw, order = grid_from_labels(files["info"], labels, NAMES)
    # elevation index e is 30 + 5e degrees, azimuth a (even) is 10a degrees
    values = (raw[0], raw[1], 30.0 + 5.0 * raw[2], 10.0 * raw[3], raw[4])
    images = dat[:, 0] if order is None else dat[order, 0]
    images = resize_images(images, size)
    options = {"path": str(path), "split": split, "size": size}
    return ArrayGroundTruthData("smallnorb", images, NAMES, values, (size, size), options)
