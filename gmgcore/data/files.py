"""Helpers shared by the readers of published data files: checks, errors, NPZ access, grids.

Every problem raises an error that names the file and says what was expected: a missing file
gives ``FileNotFoundError`` with the path and where to get it; a wrong key, shape or dtype
gives ``ValueError``.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "require_file",
    "check_array",
    "npz_keys",
    "npz_array",
    "grid_from_labels",
    "resize_images",
]


def require_file(path: Path | str, dataset: str, how_to_get: str) -> Path:
    """Return ``path`` if it is a file, else raise ``FileNotFoundError`` with how to get it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {dataset} file not found. {how_to_get}")
    return path


def check_array(
    path: Path | str, key: str, array: Any, shape: tuple[int | None, ...], dtypes: tuple[str, ...]
) -> None:
    """Raise ``ValueError`` unless ``array`` has ``shape`` (``None`` = any size) and a dtype kind.

    ``dtypes`` lists accepted numpy dtype names (``"uint8"``) or kinds (``"i"``, ``"f"``).
    """
    got_shape = tuple(array.shape)
    ok = len(got_shape) == len(shape) and all(
        want is None or want == got for want, got in zip(shape, got_shape, strict=True)
    )
    expected = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
    if not ok:
        raise ValueError(f"{path}: '{key}' has shape {got_shape}, expected {expected}")
    dtype = np.dtype(array.dtype)
    if dtype.name not in dtypes and dtype.kind not in dtypes:
        raise ValueError(f"{path}: '{key}' has dtype {dtype}, expected {' or '.join(dtypes)}")


def npz_keys(path: Path) -> list[str]:
    """Array names stored in an ``.npz`` archive; ``ValueError`` if it is not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path}: not a readable .npz archive ({err})") from err


def npz_array(path: Path, key: str, expected_keys: tuple[str, ...]) -> np.ndarray:
    """Array ``key`` of an ``.npz``: memory-mapped when stored uncompressed, else loaded.

    Memory-mapping keeps multi-gigabyte files (MPI3D: 12.7 GB) out of memory; the published
    ``np.savez`` archives store members uncompressed, ``np.savez_compressed`` ones do not.
    """
    keys = npz_keys(path)
    if key not in keys:
        raise ValueError(
            f"{path}: missing key '{key}' (found {sorted(keys)}; expected {list(expected_keys)})"
        )
    mapped = _memmap_member(path, f"{key}.npy")
    if mapped is not None:
        return mapped
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive[key]
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: cannot read '{key}' ({err})") from err


def _memmap_member(path: Path, member: str) -> np.ndarray | None:
    """Memory-map an uncompressed ``.npy`` member of a zip archive (``None`` if compressed)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        handle.seek(start)
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                return None
        except ValueError:
            return None
        if dtype.hasobject:
            return None
        offset = handle.tell()
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


def grid_from_labels(
    path: Path | str, labels: np.ndarray, names: tuple[str, ...], decimals: int = 6
) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray | None]:
    """Factor classes of labelled rows that must form a complete grid.

    ``labels`` ``[N, k]`` holds one value per factor and row (class indices or physical
    values). Returns ``(classes [N, k], values per factor, order)`` where ``order[g]`` is the
    row of grid index ``g`` (C order over the factor sizes), or ``None`` if the rows are
    already in grid order. Raises ``ValueError`` naming the file if a grid point is missing
    or repeated.
    """
    labels = np.asarray(labels)
    rounded = np.round(labels.astype(np.float64), decimals)
    columns = [np.unique(rounded[:, j], return_inverse=True) for j in range(labels.shape[1])]
    values = tuple(v for v, _ in columns)
    classes = np.stack([inv.reshape(-1) for _, inv in columns], axis=1).astype(np.int64)
    sizes = tuple(len(v) for v in values)
    expected = int(np.prod(sizes))
    if len(labels) != expected:
        raise ValueError(
            f"{path}: {len(labels)} rows do not form a full grid of factor sizes "
            f"{dict(zip(names, sizes, strict=True))} ({expected} rows expected)"
        )
    flat = np.ravel_multi_index(tuple(classes.T), sizes)
    if np.array_equal(flat, np.arange(expected)):
        return classes, values, None
    order = np.full(expected, -1, np.int64)
    order[flat] = np.arange(expected)
    if (order < 0).any():
        missing = np.unravel_index(int(np.argmax(order < 0)), sizes)
        raise ValueError(
            f"{path}: the factor grid has repeated rows; classes {tuple(map(int, missing))} "
            f"of ({', '.join(names)}) are missing"
        )
    return classes, values, order


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 images ``[n, H, W(, C)]`` to ``[n, size, size(, C)]`` (Pillow, Lanczos)."""
    from PIL import Image

    if images.shape[1] == size and images.shape[2] == size:
        return np.ascontiguousarray(images)
    out = np.empty((len(images), size, size, *images.shape[3:]), np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(np.ascontiguousarray(image))
        out[i] = np.asarray(pil.resize((size, size), Image.Resampling.LANCZOS))
    return out
