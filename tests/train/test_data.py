"""Tests for train/data.py: CIFAR-10 readers, restricted unpickling and safe download."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from train import data
from train.data import (
    BIN_DIRNAME,
    PY_DIRNAME,
    CIFAR10Data,
    DatasetNotFoundError,
    download_cifar10,
    load_cifar10,
)

TRAIN_PER_BATCH = 7
N_TEST = 5
META_NAMES = [f"class_{i}" for i in range(10)]


def _split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    return images, rng.integers(0, 10, size=n).astype(np.int32)


def _expected(seed: int = 0) -> CIFAR10Data:
    rng = np.random.default_rng(seed)
    train = [_split(rng, TRAIN_PER_BATCH) for _ in range(5)]
    test_images, test_labels = _split(rng, N_TEST)
    return CIFAR10Data(
        np.concatenate([i for i, _ in train]),
        np.concatenate([lab for _, lab in train]),
        test_images,
        test_labels,
        META_NAMES,
    )


def _batches(expected: CIFAR10Data):
    """Yields (file stem, images, labels) for the 5 train batches and the test batch."""
    for b in range(5):
        s = slice(b * TRAIN_PER_BATCH, (b + 1) * TRAIN_PER_BATCH)
        yield f"data_batch_{b + 1}", expected.train_images[s], expected.train_labels[s]
    yield "test_batch", expected.test_images, expected.test_labels


def _records(images: np.ndarray, labels: np.ndarray) -> bytes:
    flat = images.reshape(len(images), -1)
    return np.concatenate([labels.astype(np.uint8)[:, None], flat], axis=1).tobytes()


def _write_bin(root: Path, expected: CIFAR10Data, meta: bool = True) -> Path:
    batches = root / BIN_DIRNAME
    batches.mkdir(parents=True)
    for stem, images, labels in _batches(expected):
        (batches / f"{stem}.bin").write_bytes(_records(images, labels))
    if meta:
        (batches / "batches.meta.txt").write_text("\n".join(META_NAMES) + "\n\n")
    return batches


def _write_py(root: Path, expected: CIFAR10Data) -> Path:
    batches = root / PY_DIRNAME
    batches.mkdir(parents=True)
    for stem, images, labels in _batches(expected):
        batch = {
            b"batch_label": stem.encode(),
            b"labels": [int(x) for x in labels],
            b"data": images.reshape(len(images), -1),
            b"filenames": [f"{stem}_{i}.png".encode() for i in range(len(images))],
        }
        (batches / stem).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [n.encode() for n in META_NAMES], b"num_vis": 3072}
    (batches / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def _assert_equal(got: CIFAR10Data, want: CIFAR10Data) -> None:
    assert got.train_images.shape == (5 * TRAIN_PER_BATCH, 3, 32, 32)
    assert got.test_images.shape == (N_TEST, 3, 32, 32)
    assert got.train_images.dtype == got.test_images.dtype == np.uint8
    assert got.train_labels.dtype == got.test_labels.dtype == np.int32
    for g, w in zip(got[:4], want[:4], strict=True):
        np.testing.assert_array_equal(g, w)
    assert got.class_names == want.class_names


def _tar_gz(path: Path, add) -> str:
    """Writes a .tar.gz built by ``add(tar)`` and returns its MD5."""
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return hashlib.md5(path.read_bytes()).hexdigest()


def _no_leftovers(root: Path) -> None:
    """Nothing left of a failed download, not even the folder it created."""
    assert not root.exists(), sorted(p.name for p in root.iterdir())


# --- binary layout ---------------------------------------------------------------------------


def test_binary_round_trip(tmp_path):
    want = _expected()
    _write_bin(tmp_path, want)
    _assert_equal(load_cifar10(tmp_path, download=False), want)


def test_binary_batches_folder_itself(tmp_path):
    want = _expected()
    batches = _write_bin(tmp_path, want)
    _assert_equal(load_cifar10(str(batches), download=False), want)


def test_binary_without_meta_uses_default_names(tmp_path):
    _write_bin(tmp_path, _expected(), meta=False)
    assert load_cifar10(tmp_path, download=False).class_names == data.cifar10_class_names


@pytest.mark.parametrize("size", [0, 3073 * 2 + 100])
def test_binary_truncated(tmp_path, size):
    batches = _write_bin(tmp_path, _expected())
    bad = batches / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:size].ljust(size, b"\0"))
    with pytest.raises(ValueError, match=r"data_batch_3\.bin.*truncated or corrupt") as err:
        load_cifar10(tmp_path, download=False)
    assert str(bad) in str(err.value)


def test_binary_bad_label(tmp_path):
    batches = _write_bin(tmp_path, _expected())
    bad = batches / "test_batch.bin"
    raw = bytearray(bad.read_bytes())
    raw[3073 * 2] = 10  # label byte of the third record
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"test_batch\.bin.*label 10 at record 2"):
        load_cifar10(tmp_path, download=False)


def test_binary_preferred_over_python(tmp_path):
    want = _expected(0)
    _write_bin(tmp_path, want)
    _write_py(tmp_path, _expected(1))
    _assert_equal(load_cifar10(tmp_path, download=False), want)


# --- python (pickle) layout ------------------------------------------------------------------


def test_python_round_trip(tmp_path):
    want = _expected()
    batches = _write_py(tmp_path, want)
    _assert_equal(load_cifar10(tmp_path, download=False), want)
    _assert_equal(load_cifar10(batches, download=False), want)


def test_python_numpy1_pickles(tmp_path):
    # Files written under NumPy 1.x (like the official ones) name numpy.core.multiarray.
    want = _expected()
    batches = _write_py(tmp_path, want)
    for path in batches.iterdir():
        raw = path.read_bytes()
        path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert b"numpy.core.multiarray\n" in (batches / "test_batch").read_bytes()
    _assert_equal(load_cifar10(tmp_path, download=False), want)


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "eval"])
def test_python_malicious_pickle_refused(tmp_path, how):
    batches = _write_py(tmp_path / "d", _expected())
    marker = tmp_path / "pwned"
    if how == "os.system":
        payload = _Evil(os.system, f"touch {marker}")
    else:
        payload = _Evil(eval, f"open({str(marker)!r}, 'w').close()")
    evil = batches / "data_batch_2"
    evil.write_bytes(pickle.dumps({b"data": payload, b"labels": []}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refused to unpickle global") as err:
        load_cifar10(batches, download=False)
    assert str(evil) in str(err.value)
    assert ("system" if how == "os.system" else "eval") in str(err.value)
    assert not marker.exists()


def test_python_truncated_pickle(tmp_path):
    batches = _write_py(tmp_path, _expected())
    bad = batches / "test_batch"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(ValueError, match="truncated or corrupt pickle") as err:
        load_cifar10(tmp_path, download=False)
    assert str(bad) in str(err.value)


# --- download --------------------------------------------------------------------------------


def _archive(tmp_path: Path, want: CIFAR10Data) -> tuple[str, str]:
    """Builds a synthetic cifar-10-binary.tar.gz; returns (file URL, MD5)."""
    src = tmp_path / "src"
    _write_bin(src, want)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    md5 = _tar_gz(archive, lambda tar: tar.add(src / BIN_DIRNAME, arcname=BIN_DIRNAME))
    return archive.as_uri(), md5


def test_download_and_load(tmp_path):
    want = _expected()
    url, md5 = _archive(tmp_path, want)
    root = tmp_path / "data" / "nested"
    assert download_cifar10(root, url=url, md5=md5, progress=False) == root / BIN_DIRNAME
    assert sorted(p.name for p in root.iterdir()) == [BIN_DIRNAME]  # no temp files left
    _assert_equal(load_cifar10(root, download=False), want)


def test_load_downloads_when_missing(tmp_path, monkeypatch):
    want = _expected()
    url, md5 = _archive(tmp_path, want)
    calls = []

    def fake_download(root):
        calls.append(root)
        return download_cifar10(root, url=url, md5=md5, progress=False)

    monkeypatch.setattr(data, "download_cifar10", fake_download)
    root = tmp_path / "data"
    _assert_equal(load_cifar10(root), want)
    _assert_equal(load_cifar10(root), want)  # second call finds the data on disk
    assert calls == [root]


def test_download_md5_mismatch(tmp_path):
    url, md5 = _archive(tmp_path, _expected())
    root = tmp_path / "data"
    with pytest.raises(ValueError, match=f"expected {'0' * 32}, got {md5}"):
        download_cifar10(root, url=url, md5="0" * 32, progress=False)
    _no_leftovers(root)


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    tar.addfile(info)


@pytest.mark.parametrize(
    "member",
    [
        lambda tar: _add_bytes(tar, f"{BIN_DIRNAME}/../../evil"),
        lambda tar: _add_bytes(tar, "../evil"),
        lambda tar: _add_bytes(tar, "/tmp/jspatial-test-evil-abs"),
        lambda tar: _add_symlink(tar, f"{BIN_DIRNAME}/link", "../../evil"),
    ],
    ids=["dotdot-nested", "dotdot", "absolute", "symlink"],
)
def test_download_refuses_unsafe_members(tmp_path, member):
    root = tmp_path / "a" / "data"

    def add(tar):
        _add_bytes(tar, f"{BIN_DIRNAME}/test_batch.bin", bytes(3073))
        member(tar)

    archive = tmp_path / "evil.tar.gz"
    md5 = _tar_gz(archive, add)
    with pytest.raises(ValueError, match="refused archive member"):
        download_cifar10(root, url=archive.as_uri(), md5=md5, progress=False)
    _no_leftovers(root)
    assert not (tmp_path / "a" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/jspatial-test-evil-abs").exists()


def test_download_interrupted_leaves_nothing(tmp_path, monkeypatch):
    url, md5 = _archive(tmp_path, _expected())

    def interrupt(archive, dest):
        (dest / BIN_DIRNAME).mkdir()  # a half-extracted tree
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_safe_extract", interrupt)
    root = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        download_cifar10(root, url=url, md5=md5, progress=False)
    _no_leftovers(root)


def test_download_unreachable(tmp_path):
    root = tmp_path / "data"
    url = (tmp_path / "missing.tar.gz").as_uri()
    with pytest.raises(DatasetNotFoundError) as err:
        download_cifar10(root, url=url, md5="0" * 32, progress=False)
    msg = str(err.value)
    assert str(root) in msg and url in msg and data.URL in msg
    assert "--data-dir" in msg and "JSPATIAL_DATA_DIR" in msg
    _no_leftovers(root)


def test_download_failure_keeps_an_existing_folder_as_it_was(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    url = (tmp_path / "missing.tar.gz").as_uri()
    with pytest.raises(DatasetNotFoundError):
        download_cifar10(root, url=url, md5="0" * 32, progress=False)
    assert [p.name for p in root.iterdir()] == ["notes.txt"]


def test_missing_without_download(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match="--data-dir DIR") as err:
        load_cifar10(root, download=False)
    assert isinstance(err.value, RuntimeError)
    assert str(root) in str(err.value) and "JSPATIAL_DATA_DIR" in str(err.value)
    assert not root.exists()


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("JSPATIAL_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.delenv("JSPATIAL_DATA_DIR")
    assert data.default_data_dir() == Path.home() / ".cache" / "jspatial" / "data"


# --- real data -------------------------------------------------------------------------------


def test_real_cifar10():
    env = os.environ.get("JSPATIAL_DATA_DIR")
    if not env or data._find_batches_dir(Path(env)) is None:
        pytest.skip("set JSPATIAL_DATA_DIR to a folder containing cifar-10-batches-bin/")
    ds = load_cifar10(env, download=False)
    assert ds.train_images.shape == (50000, 3, 32, 32)
    assert ds.test_images.shape == (10000, 3, 32, 32)
    assert ds.train_images.dtype == ds.test_images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(ds.train_labels, minlength=10), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels, minlength=10), [1000] * 10)
    assert ds.class_names == data.cifar10_class_names
