"""The image store: a data set as one Parquet file plus a JSON manifest, and its fast reader.

Layout of a store directory::

    images.parquet   one row per image: "index" (int64, row of the source data set), one
                     int64 column per factor (class index), "image" (fixed-size binary,
                     H·W(·C) bytes of uint8 pixels); zstd, page checksums, row groups of
                     ``row_group_size`` rows so readers can stream
    manifest.json    dataset + options (``get_dataset(**)`` rebuilds the ground truth),
                     factor names and sizes, observation shape, image count, source,
                     content hash (sha256 of pixels, factors and indices in row order)

Writing goes to a temporary sibling directory that replaces the target only when complete
(``stages.atomic.atomic_dir``), so a failed run leaves an existing store untouched. Reading
decompresses the image column once into one contiguous uint8 array ``[N, H, W(, C)]``;
mini-batches are gathered from it and wrapped as torch tensors without another copy.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.atomic import atomic_dir, write_json

if TYPE_CHECKING:
    import torch

__all__ = [
    "ImageStore",
    "StoreWriter",
    "open_store",
    "write_store",
    "write_store_chunks",
    "IMAGES_FILE",
    "MANIFEST_FILE",
]

FORMAT_VERSION = 1
IMAGES_FILE = "images.parquet"
MANIFEST_FILE = "manifest.json"
COMPRESSION = "zstd"
_READ_ERRORS = (pa.ArrowException, OSError, ValueError)
_READ_THREADS = min(4, os.cpu_count() or 1)


class StoreWriter:
    """Append ``(index, factors, images)`` chunks to ``images.parquet`` in full row groups.

    Not atomic by itself: write into a directory from ``atomic_dir``. ``close()`` returns
    the number of rows and the content hash.
    """

    def __init__(
        self,
        directory: Path,
        observation_shape: tuple[int, ...],
        factor_names: tuple[str, ...],
        row_group_size: int,
    ) -> None:
        if row_group_size < 1:
            raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
        if "index" in factor_names or "image" in factor_names:
            raise ValueError(f"factor names {factor_names} clash with the columns index/image")
        self.observation_shape = tuple(observation_shape)
        self.factor_names = tuple(factor_names)
        self.row_group_size = row_group_size
        self._pixels = math.prod(self.observation_shape)
        self._schema = pa.schema(
            [("index", pa.int64())]
            + [(name, pa.int64()) for name in self.factor_names]
            + [("image", pa.binary(self._pixels))]
        )
        self._writer = pq.ParquetWriter(
            Path(directory) / IMAGES_FILE,
            self._schema,
            compression=COMPRESSION,
            use_dictionary=["index", *self.factor_names],
            write_statistics=["index", *self.factor_names],
            write_page_checksum=True,
        )
        self._hash = _ContentHash(self.observation_shape, self.factor_names)
        # hashing runs beside compression (both release the GIL); one chunk in flight
        self._hasher = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._hashing: concurrent.futures.Future | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self.num_rows = 0

    def write(self, index: np.ndarray, factors: np.ndarray, images: np.ndarray) -> None:
        """Append rows: ``index [m]``, ``factors [m, k]`` int, ``images [m, *shape]`` uint8."""
        images = np.ascontiguousarray(images)
        index = np.ascontiguousarray(index, dtype="<i8")
        factors = np.ascontiguousarray(factors, dtype="<i8")
        m = len(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.observation_shape:
            raise ValueError(
                f"images must be uint8 [m, {', '.join(map(str, self.observation_shape))}], "
                f"got {images.dtype} {images.shape}"
            )
        if factors.shape != (m, len(self.factor_names)) or index.shape != (m,):
            raise ValueError(
                f"expected index [{m}] and factors [{m}, {len(self.factor_names)}], "
                f"got {index.shape} and {factors.shape}"
            )
        if self._hashing is not None:
            self._hashing.result()
        self._hashing = self._hasher.submit(self._hash.update, index, factors, images)
        self._pending.append((index, factors, images.reshape(m, self._pixels)))
        self._pending_rows += m
        self.num_rows += m
        if self._pending_rows >= self.row_group_size:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        index, factors, images = (_concat([p[k] for p in self._pending]) for k in range(3))
        full = len(index) if final else len(index) // self.row_group_size * self.row_group_size
        if full:
            self._writer.write_table(
                self._table(index[:full], factors[:full], images[:full]),
                row_group_size=self.row_group_size,
            )
        rest = len(index) - full
        self._pending = [(index[full:], factors[full:], images[full:])] if rest else []
        self._pending_rows = rest

    def _table(self, index: np.ndarray, factors: np.ndarray, images: np.ndarray) -> pa.Table:
        image_array = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(self._pixels), len(images), [None, pa.py_buffer(images)]
        )
        columns = [pa.array(index)]
        columns += [pa.array(np.ascontiguousarray(factors[:, j])) for j in range(factors.shape[1])]
        return pa.Table.from_arrays([*columns, image_array], schema=self._schema)

    def close(self) -> tuple[int, str]:
        """Write the remaining rows and the footer; return ``(num_rows, content_hash)``."""
        self._flush(final=True)
        self._writer.close()
        if self._hashing is not None:
            self._hashing.result()
        self._hasher.shutdown()
        return self.num_rows, self._hash.hexdigest()

    def abort(self) -> None:
        """Close the file handle after a failure (the directory is discarded by the caller)."""
        self._hasher.shutdown(cancel_futures=True)
        self._writer.close()


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _ContentHash:
    """sha256 over the row-ordered streams of pixels, factors and indices (chunking-free).

    ``sha256(header ‖ sha256(pixels) ‖ sha256(factors as int64 LE) ‖ sha256(index as int64 LE))``
    with the header naming the observation shape and factors.
    """

    def __init__(self, observation_shape: tuple[int, ...], factor_names: tuple[str, ...]):
        header = {"shape": list(observation_shape), "factors": list(factor_names)}
        self._header = json.dumps(header, sort_keys=True).encode()
        self._parts = [hashlib.sha256() for _ in range(3)]

    def update(self, index: np.ndarray, factors: np.ndarray, images: np.ndarray) -> None:
        arrays = (images, np.asarray(factors, "<i8"), np.asarray(index, "<i8"))
        for hasher, array in zip(self._parts, arrays, strict=True):
            hasher.update(memoryview(np.ascontiguousarray(array)).cast("B"))

    def hexdigest(self) -> str:
        total = hashlib.sha256(self._header)
        for hasher in self._parts:
            total.update(hasher.digest())
        return total.hexdigest()


def write_store_chunks(
    out_dir: Path | str,
    chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    factor_names: tuple[str, ...] | list[str],
    factor_sizes: tuple[int, ...] | list[int],
    observation_shape: tuple[int, ...],
    dataset: str,
    options: Mapping[str, Any],
    row_group_size: int = 4096,
    source: str = "procedural",
    extra: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write ``(index [m], factors [m, k], images [m, ...])`` chunks as a store; return manifest.

    ``progress(m)`` is called after each chunk. The store appears at ``out_dir`` only once
    complete; on any error the previous content of ``out_dir`` is kept.
    """
    names, sizes = tuple(factor_names), tuple(int(s) for s in factor_sizes)
    if len(names) != len(sizes):
        raise ValueError(f"{len(names)} factor names but {len(sizes)} factor sizes")
    with atomic_dir(out_dir) as tmp:
        writer = StoreWriter(tmp, tuple(observation_shape), names, row_group_size)
        try:
            for index, factors, images in chunks:
                _check_factor_range(factors, names, sizes)
                writer.write(index, factors, images)
                if progress is not None:
                    progress(len(images))
            num_images, content_hash = writer.close()
        except BaseException:
            writer.abort()
            raise
        manifest = {
            "format_version": FORMAT_VERSION,
            "dataset": dataset,
            "options": dict(options),
            "factor_names": list(names),
            "factor_sizes": list(sizes),
            "observation_shape": list(observation_shape),
            "num_images": num_images,
            "content_hash": content_hash,
            "source": source,
            "row_group_size": row_group_size,
            "compression": COMPRESSION,
            "images_file": IMAGES_FILE,
            **dict(extra or {}),
        }
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def _check_factor_range(factors: np.ndarray, names: tuple[str, ...], sizes: tuple[int, ...]):
    factors = np.asarray(factors)
    if factors.size and ((factors < 0) | (factors >= np.asarray(sizes))).any():
        col = int(np.argwhere((factors < 0) | (factors >= np.asarray(sizes)))[0, 1])
        raise ValueError(f"factor '{names[col]}' has a class outside [0, {sizes[col]})")


def write_store(
    out_dir: Path | str,
    images: np.ndarray,
    factors: np.ndarray,
    factor_names: tuple[str, ...] | list[str],
    factor_sizes: tuple[int, ...] | list[int],
    dataset: str,
    options: Mapping[str, Any],
    row_group_size: int = 4096,
    *,
    index: np.ndarray | None = None,
    source: str = "procedural",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write in-memory ``images`` uint8 ``[N, H, W(, C)]`` and ``factors`` int ``[N, k]``.

    ``index`` (default ``0..N-1``) records each row's position in the source data set.
    Returns the manifest written beside ``images.parquet``.
    """
    images = np.asarray(images)
    factors = np.asarray(factors)
    if images.ndim not in (3, 4) or len(factors) != len(images):
        raise ValueError(
            f"expected images [N, H, W(, C)] and factors [N, k], got {images.shape} and "
            f"{factors.shape}"
        )
    rows = np.arange(len(images), dtype=np.int64) if index is None else np.asarray(index)
    step = max(row_group_size, 1)
    chunks = (
        (rows[s : s + step], factors[s : s + step], images[s : s + step])
        for s in range(0, len(images), step)
    )
    return write_store_chunks(
        out_dir, chunks, factor_names=factor_names, factor_sizes=factor_sizes,
        observation_shape=images.shape[1:], dataset=dataset, options=options,
        row_group_size=row_group_size, source=source, extra=extra,
    )  # fmt: skip


class ImageStore:
    """Read side of a store: manifest, factors, images and deterministic shuffled batches.

    Images are decompressed on first use into one contiguous uint8 array ``[N, H, W(, C)]``
    (one copy out of Parquet's buffers, row group by row group); factors int64 ``[N, k]``.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], parquet: pq.ParquetFile):
        self.directory = directory
        self.manifest = manifest
        self.path = directory / manifest.get("images_file", IMAGES_FILE)
        self._parquet = parquet
        self._images: np.ndarray | None = None
        self._factors: np.ndarray | None = None
        self._index: np.ndarray | None = None
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["factor_names"])

    @property
    def factor_sizes(self) -> tuple[int, ...]:
        return tuple(self.manifest["factor_sizes"])

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["observation_shape"])

    def __len__(self) -> int:
        return int(self.manifest["num_images"])

    def factors(self) -> np.ndarray:
        """Factor classes int64 ``[N, k]`` in row order."""
        if self._factors is None:
            table = self._read(lambda: self._parquet.read(columns=list(self.factor_names)))
            self._factors = np.stack(
                [table.column(n).to_numpy().astype(np.int64) for n in self.factor_names], axis=1
            )
        return self._factors

    def source_index(self) -> np.ndarray:
        """Row of each image in the source data set, int64 ``[N]``."""
        if self._index is None:
            table = self._read(lambda: self._parquet.read(columns=["index"]))
            self._index = table.column("index").to_numpy().astype(np.int64)
        return self._index

    def all_images(self) -> np.ndarray:
        """Every image, uint8 ``[N, H, W(, C)]``, loaded once and kept (read-only view)."""
        if self._images is None:
            self._images = self._read(self._load_images)
            self._images.flags.writeable = False
        return self._images

    def images(self, indices: np.ndarray) -> np.ndarray:
        """Images uint8 ``[n, H, W(, C)]`` at store rows ``indices [n]`` (a new array)."""
        rows = np.asarray(indices, dtype=np.int64)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"{self.path}: row index out of range for {len(self)} images")
        return self.all_images()[rows]

    def batch_indices(self, batch_size: int, seed: int, step: int) -> np.ndarray:
        """Rows int64 ``[batch_size]`` of batch ``step``: positions ``step·B .. step·B+B−1`` of
        the stream that visits every image once per epoch, epoch ``e`` in the order of the
        permutation drawn from ``default_rng([seed, e])``. A pure function of (seed, step)."""
        if batch_size < 1 or step < 0:
            raise ValueError(f"batch_size must be >= 1 and step >= 0, got {batch_size}, {step}")
        n = len(self)
        position = step * batch_size + np.arange(batch_size, dtype=np.int64)
        epoch, offset = np.divmod(position, n)
        rows = np.empty(batch_size, np.int64)
        for e in np.unique(epoch):
            sel = epoch == e
            rows[sel] = self._permutation(seed, int(e))[offset[sel]]
        return rows

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        key = (seed, epoch)
        if key not in self._permutations:
            if len(self._permutations) >= 4:
                self._permutations.pop(next(iter(self._permutations)))
            rng = np.random.default_rng([seed, epoch])
            self._permutations[key] = rng.permutation(len(self))
        return self._permutations[key]

    def batches(
        self, batch_size: int, seed: int, start_step: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless ``(images uint8 [B, H, W(, C)], factors int64 [B, k])`` torch batches.

        Batch ``s`` holds rows :meth:`batch_indices` ``(B, seed, s)``, so resuming at
        ``start_step`` replays exactly the batches an uninterrupted run would have seen.
        """
        import torch  # imported here: writing a store does not need it

        images, factors = self.all_images(), self.factors()
        step = start_step
        while True:
            rows = self.batch_indices(batch_size, seed, step)
            yield torch.from_numpy(images[rows]), torch.from_numpy(factors[rows])
            step += 1

    def ground_truth(self):
        """The source data set, rebuilt from the manifest's dataset and options."""
        from gmgcore.data import get_dataset

        return get_dataset(self.manifest["dataset"], **self.manifest["options"])

    def verify(self) -> None:
        """Recompute the content hash; raise ValueError naming the file if it differs."""
        hasher = _ContentHash(self.observation_shape, self.factor_names)
        hasher.update(self.source_index(), self.factors(), self.all_images())
        if hasher.hexdigest() != self.manifest["content_hash"]:
            raise ValueError(f"{self.path}: content does not match the manifest's content_hash")

    def _read(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except _READ_ERRORS as err:
            raise ValueError(f"{self.path}: corrupt or unreadable Parquet data ({err})") from err

    def _load_images(self) -> np.ndarray:
        """Decompress row groups in parallel threads, each straight into its slice of one array."""
        n, pixels = len(self), math.prod(self.observation_shape)
        meta = self._parquet.metadata
        counts = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(counts)])
        if starts[-1] != n:
            raise ValueError(f"{self.path}: {starts[-1]} rows, manifest says {n} images")
        out = np.empty((n, pixels), np.uint8)
        local = threading.local()

        def load(group: int) -> None:
            if not hasattr(local, "parquet"):  # one file handle per thread
                local.parquet = pq.ParquetFile(self.path, page_checksum_verification=True)
            column = local.parquet.read_row_group(group, columns=["image"]).column(0)
            position = starts[group]
            for chunk in column.chunks:
                m = len(chunk)
                data = np.frombuffer(
                    chunk.buffers()[1], np.uint8, count=m * pixels, offset=chunk.offset * pixels
                )
                out[position : position + m] = data.reshape(m, pixels)
                position += m
            if position != starts[group + 1]:
                raise ValueError(f"{self.path}: row group {group} holds {position} rows")

        workers = min(_READ_THREADS, max(len(counts), 1))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for done in pool.map(load, range(len(counts))):
                del done
        return out.reshape(n, *self.observation_shape)


def open_store(out_dir: Path | str, verify: bool = False) -> ImageStore:
    """Open the store at ``out_dir``; errors name the file (missing, truncated, mismatched)."""
    directory = Path(out_dir)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{manifest_path}: store manifest not found (create the store with the prepare stage)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{manifest_path}: not valid JSON ({err})") from err
    required = ("dataset", "options", "factor_names", "factor_sizes", "observation_shape",
                "num_images", "content_hash")  # fmt: skip
    missing = [k for k in required if k not in manifest]
    if missing or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{manifest_path}: not a version-{FORMAT_VERSION} store manifest (missing {missing}, "
            f"format_version {manifest.get('format_version')!r})"
        )
    path = directory / manifest.get("images_file", IMAGES_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: store images file not found (rerun the prepare stage)")
    try:
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
        schema = parquet.schema_arrow
    except _READ_ERRORS as err:
        raise ValueError(f"{path}: corrupt or truncated Parquet file ({err})") from err
    _check_schema(path, schema, parquet.metadata.num_rows, manifest)
    store = ImageStore(directory, manifest, parquet)
    if verify:
        store.verify()
    return store


def _check_schema(path: Path, schema: pa.Schema, num_rows: int, manifest: dict) -> None:
    pixels = math.prod(manifest["observation_shape"])
    expected = {"index": pa.int64(), "image": pa.binary(pixels)}
    expected.update({name: pa.int64() for name in manifest["factor_names"]})
    for name, kind in expected.items():
        if name not in schema.names or schema.field(name).type != kind:
            found = schema.field(name).type if name in schema.names else "missing"
            raise ValueError(f"{path}: column '{name}' should be {kind}, found {found}")
    if num_rows != manifest["num_images"]:
        raise ValueError(
            f"{path}: {num_rows} rows but the manifest says {manifest['num_images']} images"
        )
