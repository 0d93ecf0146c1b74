"""CIFAR-10 loading and download (pure NumPy + standard library).

Both official layouts are read: ``cifar-10-batches-bin/`` (fixed-size records, preferred because
it needs no unpickling) and ``cifar-10-batches-py/`` (Python 2 pickles, read with a restricted
unpickler so a tampered file cannot run code). Missing data is fetched from the official binary
archive, verified by MD5, and only ever appears on disk through an atomic rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
DATA_DIR_ENV = "JSPATIAL_DATA_DIR"
BIN_DIRNAME = "cifar-10-batches-bin"
PY_DIRNAME = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32  # label byte + R, G, B planes

cifar10_class_names = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


class DatasetNotFoundError(RuntimeError):
    """CIFAR-10 is not on disk and could not (or may not) be downloaded."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global that CIFAR-10 batches never need."""


class CIFAR10Data(NamedTuple):
    """The CIFAR-10 train and test splits.

    Attributes:
        train_images: uint8 array of shape (50000, 3, 32, 32), NCHW, RGB.
        train_labels: int32 array of shape (50000,), values in [0, 10).
        test_images: uint8 array of shape (10000, 3, 32, 32).
        test_labels: int32 array of shape (10000,).
        class_names: the 10 class names, indexed by label.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]


def default_data_dir() -> Path:
    """Returns ``$JSPATIAL_DATA_DIR`` if set, else ``~/.cache/jspatial/data``."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jspatial" / "data"


def load_cifar10(data_dir: str | os.PathLike | None = None, download: bool = True) -> CIFAR10Data:
    """Loads CIFAR-10, downloading the binary archive first if it is missing.

    Args:
        data_dir: folder containing ``cifar-10-batches-bin/`` or ``cifar-10-batches-py/``, or one
            of those batches folders itself. Defaults to :func:`default_data_dir`.
        download: whether to fetch the data when it is not found.

    Returns:
        A :class:`CIFAR10Data` with uint8 NCHW images and int32 labels.

    Raises:
        DatasetNotFoundError: data missing and ``download`` is False or the download failed.
        ValueError: a file is truncated or corrupt, or a download failed its MD5 check.
        pickle.UnpicklingError: a Python-layout pickle referenced a forbidden global.
    """
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    batches = _find_batches_dir(root)
    if batches is None:
        if not download:
            raise DatasetNotFoundError(_not_found_message(root, "download=False"))
        # A not-yet-existing batches folder was named: download next to it, not inside it.
        batches = download_cifar10(root.parent if root.name == BIN_DIRNAME else root)
    return _load_batches_dir(batches)


def _find_batches_dir(root: Path) -> Path | None:
    if _layout(root) is not None:
        return root
    for name in (BIN_DIRNAME, PY_DIRNAME):
        if (root / name).is_dir():
            return root / name
    return None


def _layout(batches: Path) -> str | None:
    if not batches.is_dir():
        return None
    if batches.name == BIN_DIRNAME or (batches / f"{TEST_BATCH}.bin").is_file():
        return "bin"
    if batches.name == PY_DIRNAME or (batches / TEST_BATCH).is_file():
        return "py"
    return None


def _load_batches_dir(batches: Path) -> CIFAR10Data:
    if _layout(batches) == "bin":
        read, names = _read_binary_batch, _read_binary_meta(batches / "batches.meta.txt")
        suffix = ".bin"
    else:
        read, names = _read_python_batch, _read_python_meta(batches / "batches.meta")
        suffix = ""
    train = [read(batches / f"{name}{suffix}") for name in TRAIN_BATCHES]
    test_images, test_labels = read(batches / f"{TEST_BATCH}{suffix}")
    return CIFAR10Data(
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
        class_names=names,
    )


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one binary batch: images (N, 3, 32, 32) uint8 and labels (N,) int32."""
    size = path.stat().st_size
    if size == 0 or size % RECORD_BYTES:
        raise ValueError(
            f"{path}: truncated or corrupt: size {size} bytes is not a positive multiple of the "
            f"{RECORD_BYTES}-byte record (1 label byte + 3072 pixel bytes)"
        )
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    images = np.ascontiguousarray(records[:, 1:]).reshape(-1, *IMAGE_SHAPE)
    return images, _checked_labels(labels, path)


def _checked_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        raise ValueError(
            f"{path}: corrupt: label {labels[bad[0]]} at record {bad[0]} is outside "
            f"[0, {NUM_CLASSES})"
        )
    return labels


def _read_binary_meta(path: Path) -> list[str]:
    if not path.is_file():
        return list(cifar10_class_names)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return _checked_names([name for name in names if name], path)


def _checked_names(names: list[str], path: Path) -> list[str]:
    if len(names) != NUM_CLASSES:
        raise ValueError(f"{path}: expected {NUM_CLASSES} class names, found {len(names)}")
    return names


def _latin1_encode(text: str, encoding: str) -> bytes:
    # Python 3 writes protocol-2 bytes as _codecs.encode(str, "latin1"); admit only that use.
    if encoding not in ("latin1", "latin-1"):
        raise ValueError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray  # NumPy >= 2; numpy.core only warns there.
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytes"): bytes,
        ("__builtin__", "bytes"): bytes,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals CIFAR-10 batches contain."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path}: refused to unpickle global {module}.{name} "
                "(not needed by CIFAR-10; the file may be malicious)"
            ) from None


def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        try:
            obj = _RestrictedUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # Any failure on untrusted bytes means a corrupt file.
            raise ValueError(f"{path}: truncated or corrupt pickle: {exc!r}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one pickled batch: images (N, 3, 32, 32) uint8 and labels (N,) int32."""
    batch = _unpickle(path)
    data, pixels = batch.get(b"data"), int(np.prod(IMAGE_SHAPE))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise ValueError(f"{path}: corrupt: b'data' is not a 2-D uint8 array")
    try:
        labels = np.asarray(batch.get(b"labels", []), dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt: b'labels' is not a list of ints") from exc
    if not (len(data) and data.shape[1] == pixels and labels.shape == (len(data),)):
        raise ValueError(
            f"{path}: corrupt: expected b'data' of shape (N>0, {pixels}) and N b'labels', "
            f"got {data.shape} and {labels.shape}"
        )
    images = np.ascontiguousarray(data).reshape(-1, *IMAGE_SHAPE)
    return images, _checked_labels(labels, path).astype(np.int32)


def _read_python_meta(path: Path) -> list[str]:
    if not path.is_file():
        return list(cifar10_class_names)
    names = _unpickle(path).get(b"label_names", [])
    return _checked_names([n.decode() if isinstance(n, bytes) else str(n) for n in names], path)


def _not_found_message(root: Path, reason: str) -> str:
    return (
        f"CIFAR-10 data was not found at {root} (looked for {BIN_DIRNAME}/ or {PY_DIRNAME}/) "
        f"and was not downloaded ({reason}). To use existing data, pass --data-dir DIR or set "
        f"the {DATA_DIR_ENV} environment variable, where DIR contains {BIN_DIRNAME}/. "
        f"To fetch it manually, download {URL} and extract it into DIR."
    )


def download_cifar10(
    data_dir: str | os.PathLike, url: str = URL, md5: str = MD5, *, progress: bool = True
) -> Path:
    """Downloads, verifies and extracts the CIFAR-10 binary archive into ``data_dir``.

    Everything is staged in hidden temporary paths inside ``data_dir`` (removed on any failure,
    including KeyboardInterrupt, together with the folders this call created);
    ``cifar-10-batches-bin/`` appears only via an atomic rename.

    Args:
        data_dir: destination folder; created if missing.
        url: archive URL (any scheme urllib supports, e.g. ``file://`` in tests).
        md5: expected hex MD5 of the archive.
        progress: whether to show a byte progress bar on stderr.

    Returns:
        Path of the extracted ``data_dir/cifar-10-batches-bin``.

    Raises:
        DatasetNotFoundError: the URL could not be fetched.
        ValueError: MD5 mismatch, or an unsafe or unexpected archive member.
    """
    root = Path(data_dir).expanduser()
    created = _first_missing(root)  # removed again (if still empty) when the download fails
    root.mkdir(parents=True, exist_ok=True)
    final = root / BIN_DIRNAME
    fd, archive = tempfile.mkstemp(dir=root, prefix=".cifar10-", suffix=".partial")
    staging, done = None, False
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(url, out, root, progress)
        if digest != md5.lower():
            raise ValueError(f"MD5 mismatch for {url}: expected {md5}, got {digest}")
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".cifar10-", suffix=".extract"))
        _safe_extract(Path(archive), staging)
        extracted = staging / BIN_DIRNAME
        if not extracted.is_dir():
            raise ValueError(f"archive from {url} does not contain {BIN_DIRNAME}/")
        try:
            os.replace(extracted, final)
        except OSError:
            if _layout(final) != "bin":  # A concurrent download that won the rename is fine.
                raise
        done = True
    finally:
        Path(archive).unlink(missing_ok=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not done and created is not None:
            _remove_empty_folders(created)
    return final


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (``None``: it exists)."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing = folder
    return missing


def _remove_empty_folders(top: Path) -> None:
    """Removes ``top`` and the folders below it, deepest first, as long as they are empty."""
    folders = [p for p in top.rglob("*") if p.is_dir()] if top.is_dir() else []
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True) + [top]:
        with contextlib.suppress(OSError):  # not empty (or gone): leave it
            folder.rmdir()


def _fetch(url: str, out: Any, root: Path, progress: bool) -> str:
    """Streams ``url`` into ``out``; returns the MD5 hex digest of the bytes written."""
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            length = response.headers.get("Content-Length")
            bar = _progress_bar(int(length) if length else None, progress)
            try:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
    # URLError, timeouts and resets are OSErrors; a short read is an HTTPException.
    except (OSError, http.client.HTTPException) as exc:
        raise DatasetNotFoundError(
            _not_found_message(root, f"download from {url} failed: {exc}")
        ) from exc
    return md5.hexdigest()


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extracts regular files and directories only; refuses paths escaping ``dest``."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                if reason := _unsafe_member(member):
                    raise ValueError(f"{archive}: refused archive member {member.name!r}: {reason}")
            # Belt and braces: the stdlib "data" filter re-checks where available (3.10.12+).
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **extra)
    except tarfile.TarError as exc:
        raise ValueError(f"{archive}: corrupt archive: {exc}") from exc


def _unsafe_member(member: tarfile.TarInfo) -> str | None:
    if member.name.startswith(("/", "\\")) or ".." in PurePosixPath(member.name).parts:
        return "absolute path or '..' component"
    if not (member.isfile() or member.isdir()):
        return "not a regular file or directory (links and devices are refused)"
    return None


class _StderrProgress:
    """Fallback progress line when tqdm is unavailable; silent when disabled."""

    def __init__(self, total: int | None, enabled: bool = True) -> None:
        self.total, self.enabled, self.done, self.last = total, enabled, 0, 0.0

    def update(self, n: int) -> None:
        self.done += n
        if self.enabled and time.monotonic() - self.last >= 0.5:
            self.last = time.monotonic()
            total = f" / {self.total / 1e6:.1f}" if self.total else ""
            sys.stderr.write(f"\rcifar-10: {self.done / 1e6:.1f}{total} MB")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write(f"\rcifar-10: {self.done / 1e6:.1f} MB done\n")


def _progress_bar(total: int | None, enabled: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return _StderrProgress(total, enabled)
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="cifar-10",
        disable=not enabled,
    )
