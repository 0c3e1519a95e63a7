"""The Parquet image store: round trips, layout, content hash, deterministic batches, and
clear errors for corrupt or missing files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from stages.store import IMAGES_FILE, MANIFEST_FILE, open_store, write_store, write_store_chunks

NAMES = ("shape", "scale", "pos")
SIZES = (3, 4, 5)


def _data(n: int = 60, colour: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (n, 64, 64, 3) if colour else (n, 64, 64)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    factors = np.stack([rng.integers(0, s, n) for s in SIZES], axis=1)
    return images, factors


def _write(path, images, factors, row_group_size=16, **kw):
    return write_store(path, images, factors, NAMES, SIZES, "toy", {"a": 1}, row_group_size, **kw)


@pytest.mark.parametrize("colour", [False, True])
def test_round_trip(tmp_path, colour):
    images, factors = _data(colour=colour)
    index = np.arange(100, 160)
    manifest = _write(tmp_path / "store", images, factors, index=index)
    store = open_store(tmp_path / "store")
    assert (
        store.manifest == manifest == json.loads((tmp_path / "store" / MANIFEST_FILE).read_text())
    )
    assert len(store) == 60 and manifest["num_images"] == 60
    assert store.factor_names == NAMES and store.factor_sizes == SIZES
    assert store.observation_shape == images.shape[1:]
    assert manifest["dataset"] == "toy" and manifest["options"] == {"a": 1}
    np.testing.assert_array_equal(store.all_images(), images)
    np.testing.assert_array_equal(store.images([5, 0, 5]), images[[5, 0, 5]])
    assert store.factors().dtype == np.int64
    np.testing.assert_array_equal(store.factors(), factors)
    np.testing.assert_array_equal(store.source_index(), index)
    store.verify()


def test_full_row_groups_whatever_the_chunking(tmp_path):
    images, factors = _data(n=100)
    chunks = ((np.arange(s, min(s + 7, 100)), factors[s : s + 7], images[s : s + 7])
              for s in range(0, 100, 7))  # fmt: skip
    manifest = write_store_chunks(
        tmp_path / "s", chunks, factor_names=NAMES, factor_sizes=SIZES,
        observation_shape=(64, 64), dataset="toy", options={}, row_group_size=32,
    )  # fmt: skip
    meta = pq.ParquetFile(tmp_path / "s" / IMAGES_FILE).metadata
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert groups == [32, 32, 32, 4]
    # the content hash depends on the rows only, not on chunking or row groups
    other = _write(tmp_path / "t", images, factors, row_group_size=100)
    assert other["content_hash"] == manifest["content_hash"]
    images[3, 1, 2] ^= 1
    changed = _write(tmp_path / "u", images, factors)
    assert changed["content_hash"] != manifest["content_hash"]


def test_batches_depend_only_on_seed_and_step(tmp_path):
    images, factors = _data(n=50)
    _write(tmp_path / "s", images, factors)
    store = open_store(tmp_path / "s")
    stream = store.batches(8, seed=3)
    first = [next(stream) for _ in range(20)]
    x, y = first[0]
    assert x.dtype == torch.uint8 and x.shape == (8, 64, 64)
    assert y.dtype == torch.int64 and y.shape == (8, 3)
    resumed = open_store(tmp_path / "s").batches(8, seed=3, start_step=13)
    for step in range(13, 20):
        xr, yr = next(resumed)
        assert torch.equal(xr, first[step][0]) and torch.equal(yr, first[step][1])
    # images and factors stay paired
    rows = store.batch_indices(8, 3, 4)
    np.testing.assert_array_equal(first[4][0].numpy(), images[rows])
    np.testing.assert_array_equal(first[4][1].numpy(), factors[rows])
    # each epoch visits every image exactly once (positions 0..49, then 50..99)
    positions = np.concatenate([store.batch_indices(10, 3, s) for s in range(10)])
    assert sorted(positions[:50]) == list(range(50)) and sorted(positions[50:]) == list(range(50))
    assert not np.array_equal(positions[:50], positions[50:])  # reshuffled per epoch
    other = np.concatenate([store.batch_indices(10, 4, s) for s in range(5)])
    assert not np.array_equal(positions[:50], other)


def test_batch_larger_than_store(tmp_path):
    images, factors = _data(n=5)
    _write(tmp_path / "s", images, factors)
    rows = open_store(tmp_path / "s").batch_indices(12, 0, 0)
    assert sorted(np.bincount(rows, minlength=5)) == [2, 2, 2, 3, 3]


def test_truncated_parquet_names_the_file(tmp_path):
    images, factors = _data()
    _write(tmp_path / "s", images, factors)
    path = tmp_path / "s" / IMAGES_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{path}: corrupt or truncated Parquet"):
        open_store(tmp_path / "s")


def test_corrupt_page_is_detected(tmp_path):
    images, factors = _data(n=64)
    _write(tmp_path / "s", images, factors, row_group_size=64)
    path = tmp_path / "s" / IMAGES_FILE
    raw = bytearray(path.read_bytes())
    image_offset = pq.ParquetFile(path).metadata.row_group(0).column(4).data_page_offset
    for k in range(64, 96):
        raw[image_offset + k] ^= 0xFF
    path.write_bytes(bytes(raw))
    store = open_store(tmp_path / "s")
    with pytest.raises(ValueError, match=f"{path}: corrupt or unreadable Parquet data"):
        store.all_images()


def test_manifest_problems(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json: store manifest not found"):
        open_store(tmp_path / "nothing")
    images, factors = _data()
    _write(tmp_path / "s", images, factors)
    manifest_path = tmp_path / "s" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "num_images": 61}))
    with pytest.raises(ValueError, match="60 rows but the manifest says 61"):
        open_store(tmp_path / "s")
    manifest_path.write_text(json.dumps({**manifest, "content_hash": "0" * 64}))
    with pytest.raises(ValueError, match="does not match the manifest's content_hash"):
        open_store(tmp_path / "s", verify=True)
    manifest_path.write_text(json.dumps({**manifest, "observation_shape": [32, 32]}))
    with pytest.raises(ValueError, match="column 'image' should be fixed_size_binary\\[1024\\]"):
        open_store(tmp_path / "s")
    (tmp_path / "s" / IMAGES_FILE).unlink()
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match="images.parquet: store images file not found"):
        open_store(tmp_path / "s")


def test_failed_write_keeps_the_existing_store(tmp_path):
    images, factors = _data()
    good = _write(tmp_path / "s", images, factors)

    def failing():
        yield np.arange(16), factors[:16], images[:16]
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_store_chunks(
            tmp_path / "s", failing(), factor_names=NAMES, factor_sizes=SIZES,
            observation_shape=(64, 64), dataset="toy", options={},
        )  # fmt: skip
    store = open_store(tmp_path / "s", verify=True)
    assert store.manifest == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary leftovers


def test_bad_input_is_rejected(tmp_path):
    images, factors = _data()
    with pytest.raises(ValueError, match="factor 'scale' has a class outside \\[0, 4\\)"):
        _write(tmp_path / "s", images, factors * [1, 9, 1])
    with pytest.raises(ValueError, match="images must be uint8"):
        _write(tmp_path / "s", images.astype(np.int16), factors)
    assert not (tmp_path / "s").exists()
