"""The built-in datasets: their names, their files, and the fixed constants that scale them.

Owns: ``DATASETS``; reading sklearn's digits, the MNIST and Fashion-MNIST IDX files and the
CIFAR-10 python batches (safely: a batch is a pickle, and only numpy's globals may load); the
opt-in torchvision download; the per-channel constants each dataset is standardised with; and the
facts ``describe_splits`` reports for them. ``read`` returns the same ``RawInput`` record as a
user input's reader, already scaled (kind "fixed").

Must not touch: splits, partitions, user inputs, torch, Flower. Nothing here opens a socket
except the opt-in ``download=True``, which asks torchvision to fetch the files.
"""

from __future__ import annotations

import functools
import gzip
import math
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from fedkd.data.layout import RawInput
from fedkd.errors import DataError

# Built-in names; anything else is a user input read by fedkd.data.source (a path or hf:NAME).
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")

DEFAULT_DATA_DIR = "data"  # used when data_dir is None; torchvision lays files out under it

# Official per-channel statistics of the training images after scaling to [0, 1]. Fixed
# constants (not recomputed from the files) so the same pixel always maps to the same value.
_MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

# IDX files of MNIST and Fashion-MNIST (same names for both), and torchvision's folder for each.
_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"

# IDX type byte -> element dtype (multi-byte types are big-endian).
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# What each loader returns: x (N, *input_shape) float32 normalised, y (N,) int64, and
# test = (test_x, test_y) for an official test split, else None; then the class count.
_Source = tuple[np.ndarray, np.ndarray, "tuple[np.ndarray, np.ndarray] | None", int]


# maxsize=2: several seeds of one dataset do not re-read and re-normalise its files.
@functools.lru_cache(maxsize=2)
def read(dataset: str, data_dir: str, download: bool) -> RawInput:
    """One of DATASETS, read from ``data_dir`` (digits ships with sklearn) and scaled."""
    if dataset == "digits":
        x, y, test, num_classes = _load_digits()
    elif dataset in _TORCHVISION_FOLDER:
        x, y, test, num_classes = _load_mnist_like(dataset, Path(data_dir), download)
    else:
        x, y, test, num_classes = _load_cifar10(Path(data_dir), download)
    return RawInput(dataset, x, y, test, num_classes, "fixed", _describe(dataset, data_dir))


def _describe(dataset: str, data_dir: str) -> dict[str, Any]:
    """describe_splits' facts for a built-in dataset, whose scaling is fixed."""
    if dataset == "digits":
        return {"dataset": dataset, "source": "sklearn", "location": "sklearn/datasets/data/digits.csv.gz (load_digits' file)",
                "raw_shape": [8, 8], "raw_dtype": "float64",
                "layout": "greyscale (N, H, W) -> (N, 1, H, W)", "value_kind": "fixed",
                "scaling": "divided by 16 to [0, 1], not standardised"}
    mean, std = _MEAN_STD[dataset]
    stored = {"cifar10": ([3, 32, 32], "channels first (N, C, H, W)")}.get(
        dataset, ([28, 28], "greyscale (N, H, W) -> (N, 1, H, W)"))
    return {"dataset": dataset, "source": "cifar-batches" if dataset == "cifar10" else "idx",
            "location": data_dir, "raw_shape": stored[0], "raw_dtype": "uint8",
            "layout": stored[1], "value_kind": "fixed",
            "scaling": "divided by 255, then standardised per channel with fixed constants",
            "mean": list(mean), "std": list(std), "stats_from": f"fixed ({dataset})"}


def _load_digits() -> _Source:
    """scikit-learn's digits (it ships the file, no download): read from the package's own
    `datasets/data/digits.csv.gz`, as `load_digits` reads it, without importing scikit-learn
    (about 3 s here, in every process that loads the splits: each simulated client's included).
    Falls back to `load_digits` if a scikit-learn release moves the file."""
    table = _digits_table()
    if table is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, target = bunch.images, bunch.target
    else:  # (1797, 65): 64 pixel values 0..16, then the label, as load_digits parses it
        images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
    x = (images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8), 0..16 -> [0, 1]
    return x, target.astype(np.int64), None, 10


def _digits_table() -> np.ndarray | None:
    """The rows of scikit-learn's digits.csv.gz, found without importing scikit-learn; None if absent."""
    import gzip
    import importlib.util

    try:
        spec = importlib.util.find_spec("sklearn")
        for root in (spec.submodule_search_locations or []) if spec else []:
            path = Path(root) / "datasets" / "data" / "digits.csv.gz"
            if path.is_file():
                with gzip.open(path, "rt", encoding="utf-8") as f:
                    table = np.loadtxt(f, delimiter=",")
                return table if table.shape == (1797, 65) else None  # another format: load_digits reads it
    except (ValueError, OSError, ImportError):  # unreadable, or an odd install: load_digits decides
        return None
    return None


def _normalise(x_uint8: np.ndarray, dataset: str) -> np.ndarray:
    """(N, C, H, W) uint8 -> float32 scaled to [0, 1], then standardised per channel."""
    mean, std = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in _MEAN_STD[dataset])
    return (x_uint8.astype(np.float32) / np.float32(255.0) - mean) / std


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: IDX files


def _load_mnist_like(dataset: str, data_dir: Path, download: bool) -> _Source:
    raw_dir = data_dir / _TORCHVISION_FOLDER[dataset] / "raw"
    paths = _find_idx_files(data_dir, raw_dir)
    if paths is None:
        _download_or_explain(
            dataset, data_dir, download,
            f"{', '.join(_IDX_FILES.values())} (each optionally .gz) in {data_dir} or {raw_dir}",
        )
        paths = _find_idx_files(data_dir, raw_dir)
        if paths is None:
            raise DataError(f"{dataset}: download finished but the IDX files are not in {raw_dir}")
    arrays = {key: read_idx(path) for key, path in paths.items()}
    out = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{dataset} {split}: images {images.shape} and labels {labels.shape} do not "
                "match; expected (N, H, W) and (N,)"
            )
        out.append((_normalise(images[:, None], dataset), _labels(labels, 10, dataset)))
    (x, y), test = out
    return x, y, test, 10


def _find_idx_files(data_dir: Path, raw_dir: Path) -> dict[str, Path] | None:
    """Locate the four IDX files (plain or .gz), torchvision's raw/ folder first."""
    found = {}
    for key, stem in _IDX_FILES.items():
        candidates = [d / f"{stem}{ext}" for d in (raw_dir, data_dir) for ext in ("", ".gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into an array of its stored dtype and shape.

    Layout: two zero bytes, a type byte, a dimension count d, then d big-endian uint32 sizes,
    then the elements in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header says {ndim} dimensions but the file is cut short")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header promises shape {dims} ({expected} bytes) but holds "
            f"{len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


# ---------------------------------------------------------------------------------------------
# CIFAR-10: python batches


def _load_cifar10(data_dir: Path, download: bool) -> _Source:
    folder = _find_cifar_folder(data_dir)
    if folder is None:
        _download_or_explain(
            "cifar10", data_dir, download,
            f"{', '.join(_CIFAR_TRAIN)}, {_CIFAR_TEST} in {data_dir / _CIFAR_FOLDER}",
        )
        folder = _find_cifar_folder(data_dir)
        if folder is None:
            raise DataError(f"cifar10: download finished but the batches are not in "
                            f"{data_dir / _CIFAR_FOLDER}")
    train = [read_cifar_batch(folder / b) for b in _CIFAR_TRAIN]
    x = np.concatenate([bx for bx, _ in train])
    y = np.concatenate([by for _, by in train])
    test_x, test_y = read_cifar_batch(folder / _CIFAR_TEST)
    return _normalise(x, "cifar10"), y, (_normalise(test_x, "cifar10"), test_y), 10


def _find_cifar_folder(data_dir: Path) -> Path | None:
    """The folder holding all six batches: torchvision's cifar-10-batches-py/, or data-dir."""
    for folder in (data_dir / _CIFAR_FOLDER, data_dir):
        if all((folder / b).is_file() for b in (*_CIFAR_TRAIN, _CIFAR_TEST)):
            return folder
    return None


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles. Allow only the globals a numpy array needs, so a hostile
    file cannot run code while we read it."""

    _ALLOWED = {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    } | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # protocol 2: bytes

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's signature)
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> x (N, 3, 32, 32) uint8, y (N,) int64.

    The batch is a pickled dict with b"data" (N, 3072) uint8, each row the 1024 red, then
    1024 green, then 1024 blue pixels in row-major order, and b"labels", N ints in 0..9.
    """
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path} is not a CIFAR-10 python batch (a pickled dict with b'data' and "
            f"b'labels'): {exc!r}"
        ) from exc
    layout_ok = data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
    if not layout_ok or labels.ndim != 1 or len(labels) != len(data):
        raise DataError(
            f"{path}: data {data.shape} {data.dtype} and labels {labels.shape} do not match "
            "the CIFAR-10 layout (N, 3072) uint8 and (N,)"
        )
    return data.reshape(-1, 3, 32, 32), _labels(labels, 10, str(path))


# ---------------------------------------------------------------------------------------------
# Shared by both file formats


def _download_or_explain(dataset: str, data_dir: Path, download: bool, expected: str) -> None:
    """Fetch ``dataset`` into ``data-dir`` with torchvision, or raise DataError saying how."""
    if not download:
        raise DataError(
            f"{dataset} files not found: expected {expected}; put them there, or pass "
            "--download (download=True; needs torchvision and internet access)"
        )
    try:
        import torchvision.datasets as tvd  # optional; fedkd does not depend on it
    except ImportError as exc:
        raise DataError(
            f"{dataset} files not found (expected {expected}) and --download needs torchvision "
            "and internet access; install torchvision or put the files there yourself"
        ) from exc
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[dataset]
    try:
        for train in (True, False):
            cls(root=str(data_dir), train=train, download=True)
    except Exception as exc:  # network and archive errors come in many types
        raise DataError(f"downloading {dataset} into {data_dir} failed: {exc!r}") from exc


def _labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Check integer labels lie in 0..num_classes-1; return them as int64."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{where}: labels range over [{labels.min()}, {labels.max()}], "
            f"expected 0..{num_classes - 1}"
        )
    return labels.astype(np.int64)
