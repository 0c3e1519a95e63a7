"""Cars3D (Reed et al. 2015, "Deep Visual Analogy-Making") from its MATLAB files.

The archive ``nips2015-analogy-data.tar.gz`` holds ``data/cars/list.txt`` (one name
``car_XXX_mesh`` per line, without extension, in object order) and one ``<name>.mat`` per
car with key ``im``: uint8 ``[128, 128, 3, 24, 4]`` = (height, width, rgb, azimuth,
elevation). Factors in index order, as in disent and the HFS code: elevation (4), azimuth
(24), object_type (183, list.txt order) = 17,568 images, resized to ``size`` (Lanczos).

``path`` may be the archive itself, its extracted root, ``data/`` or ``data/cars/``.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from gmgcore.data.base import ArrayGroundTruthData
from gmgcore.data.files import resize_images

__all__ = ["load_cars3d"]

NAMES = ("elevation", "azimuth", "object_type")
HELP = (
    "Download nips2015-analogy-data.tar.gz from http://www.scottreed.info/files/"
    "nips2015-analogy-data.tar.gz and pass the archive or the extracted data/cars folder."
)


def _read_im(source: str, handle: IO[bytes]) -> np.ndarray:
    """The ``im`` array of one car file, checked to be uint8 ``[H, W, 3, azimuth, elevation]``."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        content = loadmat(handle, variable_names=["im"])
    except (MatReadError, ValueError, TypeError, OSError) as err:
        raise ValueError(f"{source}: not a readable MATLAB file ({err})") from err
    if "im" not in content:
        keys = sorted(k for k in content if not k.startswith("__"))
        raise ValueError(f"{source}: missing key 'im' (found {keys})")
    im = content["im"]
    if im.ndim != 5 or im.shape[2] != 3 or im.shape[0] != im.shape[1] or im.dtype != np.uint8:
        raise ValueError(
            f"{source}: 'im' has shape {im.shape} and dtype {im.dtype}, expected uint8 "
            "(128, 128, 3, 24, 4) = (height, width, rgb, azimuth, elevation)"
        )
    return im


def _names(source: str, text: str) -> list[str]:
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{source}: list.txt names no car files")
    return [n[: -len(".mat")] if n.endswith(".mat") else n for n in names]


def _from_folder(folder: Path) -> tuple[list[str], Callable[[str], np.ndarray]]:
    listing = folder / "list.txt"
    names = _names(str(listing), listing.read_text())

    def read(name: str) -> np.ndarray:
        file = folder / f"{name}.mat"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: Cars3D file named in {listing} not found. {HELP}")
        with open(file, "rb") as handle:
            return _read_im(str(file), handle)

    return names, read


def _from_archive(archive: Path) -> tuple[list[str], Callable[[str], np.ndarray]]:
    """Read list.txt and every car file in one sequential pass over the archive."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if member.isfile() and len(parts) >= 2 and parts[-2] == "cars":
                    handle = tar.extractfile(member)
                    if handle is not None:
                        members[parts[-1]] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ValueError(f"{archive}: not a readable tar archive ({err})") from err
    if "list.txt" not in members:
        raise ValueError(f"{archive}: no data/cars/list.txt inside the archive")
    names = _names(f"{archive}:list.txt", members["list.txt"].decode())

    def read(name: str) -> np.ndarray:
        if f"{name}.mat" not in members:
            raise ValueError(f"{archive}: data/cars/{name}.mat named in list.txt is missing")
        return _read_im(f"{archive}:{name}.mat", io.BytesIO(members[f"{name}.mat"]))

    return names, read


def _locate(path: Path) -> tuple[list[str], Callable[[str], np.ndarray]]:
    if path.is_file():
        return _from_archive(path)
    for folder in (path, path / "cars", path / "data" / "cars"):
        if (folder / "list.txt").is_file():
            return _from_folder(folder)
    raise FileNotFoundError(f"{path}: no Cars3D archive or data/cars/list.txt found. {HELP}")


def load_cars3d(path: str | Path, size: int = 64) -> ArrayGroundTruthData:
    """Cars3D as colour images ``[size, size, 3]``, factors (elevation, azimuth, object_type)."""
    names, read = _locate(Path(path).expanduser())
    first = read(names[0])
    height, _, _, n_azimuth, n_elevation = first.shape
    images = np.empty((n_elevation, n_azimuth, len(names), size, size, 3), np.uint8)
    for obj, name in enumerate(names):
        im = first if obj == 0 else read(name)
        if im.shape != first.shape:
            raise ValueError(
                f"{name}.mat: 'im' has shape {im.shape}, expected {first.shape} like {names[0]}"
            )
        views = im.transpose(4, 3, 0, 1, 2).reshape(-1, height, height, 3)  # [(e, a), H, W, 3]
        images[:, :, obj] = resize_images(views, size).reshape(n_elevation, n_azimuth, size,
                                                               size, 3)  # fmt: skip
    values = (np.arange(n_elevation, dtype=np.float64), np.arange(n_azimuth, dtype=np.float64),
              np.arange(len(names), dtype=np.float64))  # fmt: skip
    options = {"path": str(path), "size": size}
    return ArrayGroundTruthData(
        "cars3d", images.reshape(-1, size, size, 3), NAMES, values, (size, size, 3), options
    )
