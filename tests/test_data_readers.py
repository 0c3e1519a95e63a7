"""Readers of the published files, on tiny files in the real formats written here."""

from __future__ import annotations

import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from gmgcore.data import get_dataset
from gmgcore.data.files import npz_array
from gmgcore.data.smallnorb import read_binary_matrix, write_binary_matrix


def _grid(sizes: tuple[int, ...]) -> np.ndarray:
    """All classes of a grid in C order, int64 ``[prod(sizes), len(sizes)]``."""
    return np.stack(np.unravel_index(np.arange(np.prod(sizes)), sizes), axis=1).astype(np.int64)


def _coded_images(n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Images whose pixels encode their row (constant per image, distinct per row)."""
    return np.broadcast_to((np.arange(n) % 250 + 1).astype(np.uint8).reshape(-1, *[1] * len(shape)),
                           (n, *shape)).copy()  # fmt: skip


# --- dSprites -----------------------------------------------------------------------------


def _write_dsprites(path: Path, shuffle: bool = True, **overrides) -> tuple[np.ndarray, ...]:
    sizes = (1, 3, 2, 2, 2, 2)
    classes = _grid(sizes)
    scale = 0.5 + 0.5 * classes[:, 2]
    angle = classes[:, 3] * np.pi
    values = np.column_stack([np.ones(len(classes)), classes[:, 1] + 1.0, scale, angle,
                              classes[:, 4] * 1.0, classes[:, 5] * 1.0])  # fmt: skip
    truth = get_dataset("dsprites_procedural").images(classes * [1, 1, 5, 20, 31, 31]) // 255
    order = np.random.default_rng(0).permutation(len(classes)) if shuffle else np.arange(48)
    arrays = {
        "imgs": truth[order],
        "latents_classes": classes[order],
        "latents_values": values[order],
        "metadata": np.array([{"description": "dSprites"}], dtype=object),
    }
    arrays.update(overrides)
    np.savez_compressed(path, **arrays)
    return classes, values, truth


def test_dsprites_npz_round_trip(tmp_path):
    path = tmp_path / "dsprites.npz"
    classes, values, truth = _write_dsprites(path)
    data = get_dataset("dsprites", path=str(path))
    assert data.factor_sizes == (1, 3, 2, 2, 2, 2)
    assert data.observation_shape == (64, 64)
    np.testing.assert_allclose(data.factor_values[2], [0.5, 1.0])
    picks = np.array([5, 0, 47, 5, 30])
    np.testing.assert_array_equal(data.images(classes[picks]), truth[picks] * 255)
    np.testing.assert_allclose(data.classes_to_values(classes[picks]), values[picks])
    again = get_dataset(data.name, **data.options)
    np.testing.assert_array_equal(again.images(classes[picks]), truth[picks] * 255)


def test_dsprites_hdf5_round_trip(tmp_path):
    classes, values, truth = _write_dsprites(tmp_path / "unused.npz", shuffle=False)
    path = tmp_path / "dsprites.hdf5"
    with h5py.File(path, "w") as f:
        f["imgs"] = truth
        f["latents/classes"] = classes
        f["latents/values"] = values
    data = get_dataset("dsprites", path=str(path))
    np.testing.assert_array_equal(data.images(classes[[3, 1, 3]]), truth[[3, 1, 3]] * 255)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"imgs": None}, "missing key 'imgs'"),
        ({"imgs": np.zeros((48, 32, 32), np.uint8)}, r"'imgs' has shape \(48, 32, 32\)"),
        ({"imgs": np.zeros((48, 64, 64), np.float32)}, "'imgs' has dtype float32"),
        ({"imgs": np.full((48, 64, 64), 255, np.uint8)}, "expected 0/1"),
        ({"latents_classes": np.zeros((48, 5), np.int64)}, r"'latents_classes' has shape"),
        ({"latents_classes": np.zeros((48, 6), np.int64)}, "full grid"),
    ],
)
def test_dsprites_bad_files_name_file_and_expectation(tmp_path, override, message):
    path = tmp_path / "bad.npz"
    if override.get("imgs", 0) is None:
        _write_dsprites(path)
        with np.load(path, allow_pickle=True) as f:
            arrays = {k: f[k] for k in f.files if k != "imgs"}
        np.savez_compressed(path, images=np.zeros((48, 64, 64), np.uint8), **arrays)
    else:
        _write_dsprites(path, **override)
    with pytest.raises(ValueError, match=message) as info:
        get_dataset("dsprites", path=str(path))
    assert str(path) in str(info.value)


def test_missing_files_say_where_to_get_them(tmp_path):
    cases = [("dsprites", "dsprites-dataset"), ("shapes3d", "3dshapes.h5"),
             ("mpi3d", "disentanglement_dataset"), ("smallnorb", "norb-v1.0-small"),
             ("cars3d", "nips2015-analogy-data")]  # fmt: skip
    for name, hint in cases:
        missing = tmp_path / f"no_{name}"
        with pytest.raises(FileNotFoundError) as info:
            get_dataset(name, path=str(missing))
        assert str(missing) in str(info.value) and hint in str(info.value), name


def test_not_a_file_of_that_format(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip archive at all")
    with pytest.raises(ValueError, match="not a readable .npz"):
        get_dataset("mpi3d", path=str(junk))
    junk_h5 = tmp_path / "junk.h5"
    junk_h5.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        get_dataset("shapes3d", path=str(junk_h5))


# --- Shapes3D ------------------------------------------------------------------------------


def _write_shapes3d(path: Path, labels_key: str = "labels", dtype=np.uint8) -> np.ndarray:
    sizes = (2, 2, 1, 2, 2, 3)
    classes = _grid(sizes)
    labels = np.column_stack([classes[:, 0] * 0.1, classes[:, 1] * 0.1, classes[:, 2] * 0.1,
                              0.75 + classes[:, 3] * 0.5 / 7, classes[:, 4] * 1.0,
                              -30.0 + classes[:, 5] * 60 / 14])  # fmt: skip
    images = _coded_images(len(classes), (64, 64, 3)).astype(dtype)
    with h5py.File(path, "w") as f:
        f["images"] = images
        f[labels_key] = labels
    return images


@pytest.mark.parametrize("in_memory", [False, True])
def test_shapes3d_h5_round_trip(tmp_path, in_memory):
    path = tmp_path / "3dshapes.h5"
    images = _write_shapes3d(path)
    data = get_dataset("shapes3d", path=str(path), in_memory=in_memory)
    assert data.factor_sizes == (2, 2, 1, 2, 2, 3)
    np.testing.assert_allclose(data.factor_values[5], [-30.0, -25.714286, -21.428571], atol=1e-5)
    rows = np.array([17, 3, 3, 40, 0])  # unsorted, repeated: the h5 read must cope
    np.testing.assert_array_equal(data.images(data.index_to_classes(rows)), images[rows])


def test_shapes3d_bad_keys_and_dtypes(tmp_path):
    path = tmp_path / "a.h5"
    _write_shapes3d(path, labels_key="factors")
    with pytest.raises(ValueError, match="missing dataset 'labels'"):
        get_dataset("shapes3d", path=str(path))
    path = tmp_path / "b.h5"
    _write_shapes3d(path, dtype=np.float32)
    with pytest.raises(ValueError, match="'images' has dtype float32, expected uint8"):
        get_dataset("shapes3d", path=str(path))


# --- MPI3D ---------------------------------------------------------------------------------


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_mpi3d_npz_round_trip(tmp_path, save):
    sizes = (2, 1, 2, 1, 1, 3, 2)
    images = _coded_images(int(np.prod(sizes)), (64, 64, 3))
    path = tmp_path / "mpi3d_toy.npz"
    save(path, images=images)
    data = get_dataset("mpi3d", path=str(path), factor_sizes=list(sizes))
    assert data.factor_sizes == sizes and data.factor_names[-1] == "vertical_axis"
    rows = np.array([23, 0, 7])
    np.testing.assert_array_equal(data.images(data.index_to_classes(rows)), images[rows])
    mapped = npz_array(path, "images", ("images",))
    assert isinstance(mapped, np.memmap) == (save is np.savez)  # uncompressed: memory-mapped
    np.testing.assert_array_equal(mapped, images)
    again = get_dataset(data.name, **data.options)
    assert again.factor_sizes == sizes


def test_mpi3d_sizes_must_come_from_count_or_option(tmp_path):
    path = tmp_path / "mpi3d.npz"
    np.savez(path, images=np.zeros((24, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="1036800 .*460800"):
        get_dataset("mpi3d", path=str(path))
    with pytest.raises(ValueError, match="product is the image count 24"):
        get_dataset("mpi3d", path=str(path), factor_sizes=[2, 2, 2, 1, 1, 1, 1])
    np.savez(path, imgs=np.zeros((24, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="missing key 'images'"):
        get_dataset("mpi3d", path=str(path), factor_sizes=[2, 3, 2, 2, 1, 1, 1])


# --- SmallNORB -----------------------------------------------------------------------------


def _write_norb(folder: Path, split: str, compress: bool) -> np.ndarray:
    """A 2 categories × 2 instances × 2 elevations × 2 azimuths × 1 lighting split."""
    prefix = {"train": "smallnorb-5x46789x9x18x6x2x96x96-training",
              "test": "smallnorb-5x01235x9x18x6x2x96x96-testing"}[split]  # fmt: skip
    grid = _grid((2, 2, 2, 2, 1))
    order = np.random.default_rng(1).permutation(len(grid))
    raw = grid[order]
    instance = np.where(raw[:, 1] == 0, 4, 7)  # instances are labelled 0..9 across splits
    info = np.column_stack([instance, raw[:, 2], raw[:, 3] * 2, raw[:, 4]]).astype(np.int32)
    pair = _coded_images(len(grid), (96, 96))[order]  # row r holds grid point order[r]
    dat = np.stack([pair, 255 - pair], axis=1)
    suffix = ".mat.gz" if compress else ".mat"
    write_binary_matrix(folder / f"{prefix}-dat{suffix}", dat, compress)
    write_binary_matrix(folder / f"{prefix}-cat{suffix}", raw[:, 0].astype(np.int32), compress)
    write_binary_matrix(folder / f"{prefix}-info{suffix}", info, compress)
    return _coded_images(len(grid), (64, 64))  # grid order, resized (constant images)


@pytest.mark.parametrize("compress", [False, True])
def test_smallnorb_round_trip(tmp_path, compress):
    expected = _write_norb(tmp_path, "test", compress)
    data = get_dataset("smallnorb", path=str(tmp_path), split="test")
    assert data.factor_names == ("category", "instance", "elevation", "azimuth", "lighting")
    assert data.factor_sizes == (2, 2, 2, 2, 1)
    np.testing.assert_allclose(data.factor_values[2], [30.0, 35.0])
    np.testing.assert_allclose(data.factor_values[3], [0.0, 20.0])
    assert data.observation_shape == (64, 64)
    rows = np.arange(16)[::-1]
    np.testing.assert_array_equal(data.images(data.index_to_classes(rows)), expected[rows])


def test_binary_matrix_round_trip_and_errors(tmp_path):
    for array in (np.arange(5, dtype=np.int32), np.ones((2, 3), np.float32),
                  np.arange(24, dtype=np.uint8).reshape(2, 3, 2, 2)):  # fmt: skip
        write_binary_matrix(tmp_path / "m.mat", array)
        back = read_binary_matrix(tmp_path / "m.mat")
        assert back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)
    raw = (tmp_path / "m.mat").read_bytes()
    (tmp_path / "short.mat").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="short.mat: binary matrix of shape .* needs"):
        read_binary_matrix(tmp_path / "short.mat")
    (tmp_path / "magic.mat").write_bytes(b"\x00" * 4 + raw[4:])
    with pytest.raises(ValueError, match="magic.mat: unknown binary matrix magic"):
        read_binary_matrix(tmp_path / "magic.mat")


def test_smallnorb_wrong_matrix_type(tmp_path):
    _write_norb(tmp_path, "train", False)
    dat = tmp_path / "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat"
    write_binary_matrix(dat, np.zeros((16, 2, 96, 96), np.float32))
    with pytest.raises(ValueError, match="training-dat.mat: matrix has .* dtype float32"):
        get_dataset("smallnorb", path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="testing-dat.mat"):
        get_dataset("smallnorb", path=str(tmp_path), split="test")


# --- Cars3D --------------------------------------------------------------------------------


def _car(obj: int, n_azimuth: int = 3, n_elevation: int = 2) -> np.ndarray:
    """``im`` uint8 [128, 128, 3, azimuth, elevation]; pixel = 100·elev + 10·azim + obj."""
    e, a = np.meshgrid(np.arange(n_elevation), np.arange(n_azimuth))  # [azimuth, elevation]
    code = (100 * e + 10 * a + obj).astype(np.uint8)
    return np.broadcast_to(code, (128, 128, 3, n_azimuth, n_elevation)).copy()


def _write_cars(folder: Path, n_objects: int = 2) -> None:
    folder.mkdir(parents=True)
    names = [f"car_{i:03d}_mesh" for i in range(n_objects)]
    (folder / "list.txt").write_text("\n".join(names) + "\n")
    for obj, name in enumerate(names):
        scipy.io.savemat(folder / f"{name}.mat", {"im": _car(obj), "mask": np.ones((128, 128))})


def _check_cars(data) -> None:
    assert data.factor_names == ("elevation", "azimuth", "object_type")
    assert data.factor_sizes == (2, 3, 2)
    classes = _grid((2, 3, 2))
    pixels = data.images(classes)[:, 10, 20, 0]
    np.testing.assert_array_equal(pixels, 100 * classes[:, 0] + 10 * classes[:, 1] + classes[:, 2])


def test_cars3d_folder_and_archive(tmp_path):
    _write_cars(tmp_path / "data" / "cars")
    _check_cars(get_dataset("cars3d", path=str(tmp_path)))
    archive = tmp_path / "nips2015-analogy-data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "data", arcname="data")
    _check_cars(get_dataset("cars3d", path=str(archive)))


def test_cars3d_bad_mat_files(tmp_path):
    folder = tmp_path / "cars"
    _write_cars(folder)
    scipy.io.savemat(folder / "car_001_mesh.mat", {"image": _car(1)})
    with pytest.raises(ValueError, match="car_001_mesh.mat: missing key 'im'"):
        get_dataset("cars3d", path=str(folder))
    scipy.io.savemat(folder / "car_001_mesh.mat", {"im": np.zeros((128, 128, 4, 3, 2), np.uint8)})
    with pytest.raises(ValueError, match=r"car_001_mesh.mat: 'im' has shape \(128, 128, 4, 3, 2\)"):
        get_dataset("cars3d", path=str(folder))
    (folder / "car_001_mesh.mat").write_bytes(b"junk")
    with pytest.raises(ValueError, match="car_001_mesh.mat: not a readable MATLAB file"):
        get_dataset("cars3d", path=str(folder))
