"""Ground-truth data: a grid of discrete factors and one image per grid point.

Every data set here is a full factorial grid. Factor ``j`` takes ``factor_sizes[j]`` values
(class indices ``0..size-1``, physical values in ``factor_values[j]``), and image ``i`` of the
data set is the grid point whose classes are ``unravel_index(i, factor_sizes)``: the last
factor varies fastest (C order), which is the order of the published dSprites and Shapes3D files.

Shapes: classes are int64 ``[n, n_factors]``, indices int64 ``[n]``, images uint8
``[n, *observation_shape]`` with ``observation_shape`` ``(64, 64)`` or ``(64, 64, 3)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["GroundTruthData", "ArrayGroundTruthData"]


class GroundTruthData:
    """Base class: factor bookkeeping shared by procedural renderers and file readers.

    Subclasses set ``name``, ``factor_names``, ``factor_sizes``, ``factor_values`` and
    ``observation_shape`` and implement :meth:`_render` for validated classes.
    """

    name: str
    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]
    factor_values: tuple[np.ndarray, ...]
    observation_shape: tuple[int, ...]

    @property
    def options(self) -> dict[str, Any]:
        """Keyword options that rebuild this data set: ``get_dataset(name, **options)``."""
        return {}

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    @property
    def num_images(self) -> int:
        return math.prod(self.factor_sizes)

    def __len__(self) -> int:
        return self.num_images

    def index_to_classes(self, index: np.ndarray | int) -> np.ndarray:
        """Dataset indices ``[n]`` to classes int64 ``[n, n_factors]`` (last factor fastest)."""
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_images):
            raise ValueError(
                f"{self.name}: index out of range [0, {self.num_images}) "
                f"(got min {idx.min()}, max {idx.max()})"
            )
        return np.stack(np.unravel_index(idx, self.factor_sizes), axis=1).astype(np.int64)

    def classes_to_index(self, classes: np.ndarray) -> np.ndarray:
        """Classes ``[n, n_factors]`` to dataset indices int64 ``[n]``."""
        cls = self.check_classes(classes)
        return np.ravel_multi_index(tuple(cls.T), self.factor_sizes).astype(np.int64)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` factor vectors int64 ``[n, n_factors]``, each factor uniform, independent."""
        cols = [rng.integers(0, size, size=n, dtype=np.int64) for size in self.factor_sizes]
        return np.stack(cols, axis=1) if cols else np.zeros((n, 0), np.int64)

    def classes_to_values(self, classes: np.ndarray) -> np.ndarray:
        """Physical factor values float64 ``[n, n_factors]`` (e.g. scale 0.5..1) of classes."""
        cls = self.check_classes(classes)
        return np.stack([v[c] for v, c in zip(self.factor_values, cls.T, strict=True)], axis=1)

    def check_classes(self, classes: np.ndarray) -> np.ndarray:
        """Return ``classes`` as int64 ``[n, n_factors]``; raise ValueError naming the problem."""
        cls = np.asarray(classes)
        if cls.ndim != 2 or cls.shape[1] != self.num_factors:
            raise ValueError(
                f"{self.name}: classes must have shape [n, {self.num_factors}] "
                f"({', '.join(self.factor_names)}), got {cls.shape}"
            )
        if cls.size and not np.issubdtype(cls.dtype, np.integer):
            raise ValueError(f"{self.name}: classes must be integers, got dtype {cls.dtype}")
        cls = cls.astype(np.int64, copy=False)
        if cls.size:
            bad = (cls < 0) | (cls >= np.asarray(self.factor_sizes))
            if bad.any():
                row, col = np.argwhere(bad)[0]
                raise ValueError(
                    f"{self.name}: factor '{self.factor_names[col]}' class {cls[row, col]} "
                    f"out of range [0, {self.factor_sizes[col]}) at row {row}"
                )
        return cls

    def images(self, classes: np.ndarray) -> np.ndarray:
        """Images uint8 ``[n, *observation_shape]`` for classes ``[n, n_factors]``."""
        cls = self.check_classes(classes)
        if len(cls) == 0:
            return np.zeros((0, *self.observation_shape), np.uint8)
        return self._render(cls)

    def images_at(self, index: np.ndarray) -> np.ndarray:
        """Images uint8 ``[n, *observation_shape]`` for dataset indices ``[n]``."""
        return self.images(self.index_to_classes(index))

    def iter_chunks(
        self, index: np.ndarray | None = None, chunk_size: int = 16384
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(index [m], classes [m, k], images [m, ...])`` chunks of ``index`` (or all).

        Memory stays bounded by one chunk, which is how a full data set is written to disk.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        total = self.num_images if index is None else len(index)
        for start in range(0, total, chunk_size):
            stop = min(start + chunk_size, total)
            if index is None:
                idx = np.arange(start, stop, dtype=np.int64)
            else:
                idx = np.asarray(index[start:stop], np.int64)
            cls = self.index_to_classes(idx)
            yield idx, cls, self._render(cls)

    def _render(self, classes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        pairs = zip(self.factor_names, self.factor_sizes, strict=True)
        factors = ", ".join(f"{n}={s}" for n, s in pairs)
        return f"{type(self).__name__}({self.name!r}, {factors})"


class ArrayGroundTruthData(GroundTruthData):
    """Ground truth backed by an image array in grid order (a loaded or memory-mapped file).

    ``images`` is indexable by an int array (numpy array, memmap or h5py dataset) holding
    ``[num_images, *observation_shape]`` rows in C order over ``factor_sizes``; ``order``, if
    given, maps grid index to row (for files stored in another order). ``multiplier`` rescales
    stored values (dSprites stores 0/1 and is served as 0/255).
    """

    def __init__(
        self,
        name: str,
        images: Any,
        factor_names: tuple[str, ...],
        factor_values: tuple[np.ndarray, ...],
        observation_shape: tuple[int, ...],
        options: Mapping[str, Any],
        order: np.ndarray | None = None,
        multiplier: int = 1,
    ) -> None:
        self.name = name
        self.factor_names = tuple(factor_names)
        self.factor_values = tuple(np.asarray(v, np.float64) for v in factor_values)
        self.factor_sizes = tuple(len(v) for v in self.factor_values)
        self.observation_shape = tuple(observation_shape)
        self._array = images
        self._order = order
        self._multiplier = multiplier
        self._options = dict(options)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def _render(self, classes: np.ndarray) -> np.ndarray:
        rows = np.ravel_multi_index(tuple(classes.T), self.factor_sizes)
        if self._order is not None:
            rows = self._order[rows]
        out = _take_rows(self._array, rows)
        if self._multiplier != 1:
            np.multiply(out, self._multiplier, out=out)
        return out


def _take_rows(array: Any, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` as a new uint8 array; h5py datasets need sorted unique indices."""
    if isinstance(array, np.ndarray):
        return np.ascontiguousarray(array[rows], dtype=np.uint8)
    unique, inverse = np.unique(rows, return_inverse=True)
    if len(unique) > 1 and unique[-1] - unique[0] + 1 == len(unique):
        block = np.asarray(array[int(unique[0]) : int(unique[-1]) + 1])  # one contiguous read
    else:
        block = np.asarray(array[unique])
    return np.ascontiguousarray(block[inverse], dtype=np.uint8)
