"""Datasets, the test / public / private splits, and the per-client partitions.

Owns: reading the built-in datasets (sklearn's digits, MNIST and Fashion-MNIST IDX files,
CIFAR-10 python batches), the held-out test split, the shared unlabelled public (transfer) set,
the partition of the private pool across clients, made by flwr_datasets partitioners, and
``describe_splits``, the plain record of how an input was resolved. ``load_splits`` is the only
entry point the rest of fedkd needs. User-held inputs (.npz, Hugging Face datasets, parquet,
image folders) are read by fedkd.inputs, which also owns their layout and scaling rules; their
standardisation constants are measured here, on the public split, once it is drawn.

Must not touch: torch, Flower messaging, models or training state, and the network (the one
exception is the opt-in ``download=True``, which asks torchvision to fetch the files). Every
result is a pure function of the arguments and the files on disk, numpy in and numpy out.

Split order, the same for every dataset:
  1. test:    the official test split (mnist, fashion-mnist, cifar10, and user inputs that
              have one), or a stratified, seeded ``test_fraction`` of the examples;
  2. public:  ``num_public`` examples drawn stratified and seeded from what is left;
  3. private: the rest, shuffled with the seed and partitioned across ``num_clients``.
The three are disjoint and together hold every example exactly once.
"""

from __future__ import annotations

import functools
import gzip
import math
import numbers
import os
import pickle
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedkd import inputs
from fedkd.errors import DataError, require_clients

# Built-in names; anything else is a user input read by fedkd.inputs (a path or hf:NAME).
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")
PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "pathological")

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


@dataclass(frozen=True, eq=False)  # eq=False: comparing array fields with == is ambiguous
class Splits:
    """One dataset split into private (partitioned), public and test parts; arrays read-only."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]  # one example, channels first, e.g. (1, 8, 8) or (F,)
    private_x: np.ndarray  # (N_priv, *input_shape) float32, normalised
    private_y: np.ndarray  # (N_priv,) int64
    partitions: tuple[np.ndarray, ...]  # per client: int64 indices into private_*, disjoint
    public_x: np.ndarray  # (N_pub, *input_shape) float32, the shared unlabelled transfer set
    public_y: np.ndarray  # (N_pub,) int64; for reporting / hard labels only, never by default
    test_x: np.ndarray  # (N_test, *input_shape) float32
    test_y: np.ndarray  # (N_test,) int64
    # How the input was read and scaled (JSON-ready); describe_splits adds the split sizes.
    resolved: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_clients(self) -> int:
        return len(self.partitions)

    def client(self, cid: int) -> tuple[np.ndarray, np.ndarray]:
        """Client ``cid``'s private (x, y): fresh writable copies, so torch.from_numpy is fine."""
        if not 0 <= cid < len(self.partitions):
            raise DataError(f"client id {cid} is out of range [0, {len(self.partitions)})")
        idx = self.partitions[cid]
        return self.private_x[idx], self.private_y[idx]  # fancy indexing copies


def load_splits(
    dataset: str = "digits",
    *,
    num_clients: int = 10,
    partition: str = "dirichlet",
    alpha: float = 0.5,
    classes_per_client: int = 2,
    num_public: int = 500,
    test_fraction: float = 0.2,
    seed: int = 0,
    data_dir: str | None = None,
    download: bool = False,
    min_partition_size: int = 1,
) -> Splits:
    """Load ``dataset`` and split it into test, public and per-client private parts.

    dataset: one of DATASETS, or a user input read by fedkd.inputs: a ``.npz`` (``x``/``y`` or
        Keras's ``x_train``/``y_train``/``x_test``/``y_test``), a ``.parquet`` file, a
        ``save_to_disk``, parquet or image folder, or ``hf:NAME`` (the Hub or its cache), each
        optionally followed by ``?image=COL&label=COL&train=SPLIT&test=SPLIT&subset=NAME``.
        Layout and scaling rules: fedkd.inputs; constants: the public split.
    partition: "iid" (random equal shards), "dirichlet" (per-label client shares drawn from
        Dirichlet(alpha); small alpha = skewed), or "pathological" (each client holds exactly
        ``classes_per_client`` labels; client c gets labels c, c+1, ... mod num_classes).
    min_partition_size: every client gets at least this many private examples. "dirichlet"
        redraws up to 10 times to meet it; the other schemes fail with DataError if they miss it.
    test_fraction: used only where there is no official test split (digits, most user inputs).
    data_dir: where mnist / fashion-mnist / cifar10 files live (default ``./data``).
    download: if the files are missing, fetch them with torchvision (needs torchvision + internet).

    The same arguments always give bitwise-identical arrays. Results are cached in-process
    (every simulated client calls this), so all arrays come back read-only.
    """
    if not isinstance(dataset, str) or not dataset:
        raise DataError(f"dataset={dataset!r} must be a name ({', '.join(DATASETS)}), a path or hf:NAME")
    if partition not in PARTITIONS:
        raise DataError(f"unknown partition {partition!r}; choose one of {', '.join(PARTITIONS)}")
    if not (isinstance(alpha, numbers.Real) and math.isfinite(alpha) and alpha > 0):
        raise DataError(f"alpha={alpha!r} must be a finite number > 0 (smaller = more skewed)")
    require_clients("num-clients", num_clients)
    if num_public <= 0:
        raise DataError(f"num-public={num_public} must be at least 1")
    if not 0 < test_fraction < 1:
        raise DataError(f"test-fraction={test_fraction} must lie strictly between 0 and 1")
    if min_partition_size < 1:
        raise DataError(f"min-partition-size={min_partition_size} must be at least 1")
    if not (isinstance(seed, numbers.Integral) and seed >= 0):
        raise DataError(f"seed={seed!r} must be a non-negative integer")

    # Normalise the cache key: a resolved path, float alpha, plain ints.
    if dataset not in DATASETS:
        dataset = inputs.canonical(dataset)
    root = str(Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser().resolve())
    key = (dataset, int(num_clients), partition, float(alpha), int(classes_per_client),
           int(num_public), float(test_fraction), int(seed), root, bool(download), int(min_partition_size))
    folder = os.environ.get(SPLITS_CACHE_ENV)
    if folder and dataset in DATASETS:  # a user's file may change under its name; a built-in dataset does not
        return _splits_on_disk(folder, key)
    return _build_splits(*key)


# A folder where splits are also kept between processes, one .npz per set of data settings. A
# deployed SuperNode (`fedkd deploy` sets this) starts a fresh process for every message; without
# the folder each train message would import sklearn and split the data again (5 s here).
SPLITS_CACHE_ENV = "FEDKD_SPLITS_CACHE"
_SPLIT_ARRAYS = ("private_x", "private_y", "public_x", "public_y", "test_x", "test_y")


@functools.lru_cache(maxsize=4)
def _splits_on_disk(folder: str, key: tuple) -> Splits:
    """The splits of `key` (load_splits' normalised arguments) from `folder`, built and written
    there (atomically: concurrent nodes may race) when missing or unreadable."""
    import hashlib
    import json

    path = Path(folder) / f"splits-{hashlib.sha256(repr(key).encode()).hexdigest()[:24]}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta["key"] != json.loads(json.dumps(list(key))):
                raise ValueError("another key")
            arrays = {name: z[name] for name in _SPLIT_ARRAYS}
            parts = tuple(z[f"part-{i}"] for i in range(meta["num_clients"]))
        splits = Splits(name=meta["name"], num_classes=meta["num_classes"], input_shape=tuple(meta["input_shape"]),
                        partitions=parts, resolved=meta["resolved"], **arrays)
        for arr in (*arrays.values(), *parts):
            arr.setflags(write=False)
        return splits
    except (OSError, ValueError, KeyError):
        pass  # missing, partly written by an older fedkd, or corrupt: build it again
    splits = _build_splits(*key)
    meta = {"key": list(key), "name": splits.name, "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape), "num_clients": splits.num_clients, "resolved": dict(splits.resolved)}
    Path(folder).mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), **{name: getattr(splits, name) for name in _SPLIT_ARRAYS},
             **{f"part-{i}": p for i, p in enumerate(splits.partitions)})
    os.replace(tmp, path)
    return splits


# maxsize=4: a CIFAR-10 Splits holds ~0.7 GB, and a run uses one configuration at a time.
@functools.lru_cache(maxsize=4)
def _build_splits(
    dataset: str, num_clients: int, partition: str, alpha: float, classes_per_client: int,
    num_public: int, test_fraction: float, seed: int, data_dir: str, download: bool,
    min_partition_size: int,
) -> Splits:
    """The cached body of load_splits; arguments are already validated and normalised."""
    if dataset in DATASETS:
        x, y, test, num_classes = _load_source(dataset, data_dir, download)
        name, raw, resolved = dataset, None, _builtin_resolution(dataset, data_dir)
    else:
        raw = inputs.read_input(dataset)
        x, y, test, num_classes = raw.x, raw.y, raw.test, raw.num_classes
        name, resolved = raw.name, {"dataset": dataset, **raw.info}
    if partition == "pathological" and not 1 <= classes_per_client <= num_classes:
        raise DataError(
            f"classes-per-client={classes_per_client} must lie in [1, {num_classes}] "
            f"for {name} ({num_classes} classes)"
        )

    # One generator, used in a fixed order, so every draw below follows from `seed` alone.
    rng = np.random.default_rng(seed)

    # 1. Test split. `train` indexes into x / y; the official test arrays are separate.
    if test is None:
        n_test = round(test_fraction * len(y))
        if not 1 <= n_test < len(y):
            raise DataError(
                f"test-fraction={test_fraction} of {len(y)} examples gives {n_test} test "
                f"examples; choose a fraction that leaves between 1 and {len(y) - 1}"
            )
        test_idx, train = _stratified_take(y, np.arange(len(y)), n_test, rng)
        test_x, test_y = x[test_idx], y[test_idx]
        resolved["test_split"] = f"test-fraction={test_fraction}"
    else:
        train = np.arange(len(y))
        test_x, test_y = test
        resolved["test_split"] = "official"

    # 2. Public split, leaving room for min_partition_size examples on every client.
    needed = num_clients * min_partition_size
    if needed >= len(train):
        raise DataError(
            f"num-clients={num_clients} x min-partition-size={min_partition_size} = {needed} "
            f"private examples, but {name} has only {len(train)} training examples and the "
            "public set needs at least 1; use fewer clients or a smaller min-partition-size"
        )
    available = len(train) - needed
    if num_public > available:
        raise DataError(
            f"num-public={num_public} is more than the {available} available ({len(train)} "
            f"training examples, keeping {min_partition_size} for each of {num_clients} clients)"
        )
    public_idx, private_idx = _stratified_take(y, train, num_public, rng)

    # 3. Private pool, shuffled: IidPartitioner takes contiguous shards of this order, and the
    #    other partitioners split each label's examples in this order, so the seed reaches all.
    private_idx = rng.permutation(private_idx)
    private_y = y[private_idx]

    # 4. User inputs: scale with constants measured on the public split (fedkd.inputs' rules).
    if raw is not None:
        scaling = inputs.fit_scaling(raw.kind, x[public_idx])
        x, test_x = scaling.apply(x), scaling.apply(test_x)
        resolved.update(scaling=scaling.describe(), mean=scaling.mean and list(scaling.mean),
                        std=scaling.std and list(scaling.std),
                        stats_from="public set" if scaling.mean else None)

    parts = _partition(
        private_y, partition, num_clients, alpha, classes_per_client, min_partition_size, seed
    )

    splits = Splits(
        name=name,
        num_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
        private_x=x[private_idx],
        private_y=private_y,
        partitions=parts,
        public_x=x[public_idx],
        public_y=y[public_idx],
        test_x=test_x,
        test_y=test_y,
        resolved=resolved,
    )
    # Cached and shared by every caller: make the arrays read-only so none can corrupt them.
    for arr in (splits.private_x, splits.private_y, splits.public_x, splits.public_y,
                splits.test_x, splits.test_y, *splits.partitions):
        arr.setflags(write=False)
    return splits


def describe_splits(splits: Splits) -> dict[str, Any]:
    """How ``splits`` was resolved, as a plain JSON-ready dict, for logs and config.json.

    Keys: dataset, source, location, raw_shape (one example as stored), raw_dtype, layout,
    input_shape (as models see it), value_kind ("0-255", "0-1", "as-given" or "fixed"),
    scaling (in words), mean / std (per channel, or None), stats_from, num_classes,
    class_names (or None), test_split, and sizes {private, public, test, clients: [...]}.
    User inputs may add columns {image, label}, splits_used {train, test} and offline.
    """
    facts = {
        **splits.resolved,
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "sizes": {"private": len(splits.private_y), "public": len(splits.public_y),
                  "test": len(splits.test_y), "clients": [len(p) for p in splits.partitions]},
    }
    first = ("dataset", "source", "location", "raw_shape", "raw_dtype", "layout", "input_shape",
             "value_kind", "scaling", "mean", "std", "stats_from", "num_classes", "class_names",
             "test_split", "sizes")
    return {**{k: facts.get(k) for k in first}, **facts}  # fixed order, then reader extras


def _builtin_resolution(dataset: str, data_dir: str) -> dict[str, Any]:
    """describe_splits' facts for a built-in dataset, whose scaling is fixed."""
    if dataset == "digits":
        return {"dataset": dataset, "source": "sklearn", "location": "sklearn.datasets.load_digits",
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


# ---------------------------------------------------------------------------------------------
# Splitting and partitioning


def _stratified_take(
    y: np.ndarray, among: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split the indices ``among`` into (k picked, the rest), keeping label proportions.

    Each label gets floor(its share of k); the few slots left go to the labels whose share lost
    most to rounding (largest remainder), ties to the lower label, so exactly k are picked.
    Both returned arrays are sorted.
    """
    labels, counts = np.unique(y[among], return_counts=True)
    share = counts * (k / len(among))  # (num_labels,) ideal, fractional
    take = np.floor(share).astype(np.int64)
    leftover = k - int(take.sum())
    take[np.argsort(-(share - take), kind="stable")[:leftover]] += 1
    picked = np.concatenate([
        rng.permutation(among[y[among] == label])[:n] for label, n in zip(labels, take)
    ])
    picked.sort()
    return picked, np.setdiff1d(among, picked, assume_unique=True)


def _partition(
    labels: np.ndarray, scheme: str, num_clients: int, alpha: float, classes_per_client: int,
    min_partition_size: int, seed: int,
) -> tuple[np.ndarray, ...]:
    """Partition positions 0..len(labels)-1 across clients with a flwr_datasets partitioner.

    The partitioners work on a Hugging Face Dataset. We hand them only the label column plus
    an ``idx`` column (row i holds i; no images), and read ``idx`` back from each partition.
    """
    # Imported here: `datasets` takes ~2 s to import, and only partitioning needs it.
    import datasets
    from flwr_datasets.partitioner import (
        DirichletPartitioner, IidPartitioner, PathologicalPartitioner,
    )

    n = len(labels)
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_clients)
    elif scheme == "dirichlet":
        # self_balancing=False: shares follow Dirichlet(alpha) as in Hsu et al. 2019, not
        # flattened by capping clients at the mean size.
        partitioner = DirichletPartitioner(
            num_partitions=num_clients, partition_by="label", alpha=alpha,
            min_partition_size=min_partition_size, self_balancing=False, seed=seed,
        )
    else:
        # "deterministic": client c holds labels c, c+1, ..., c+k-1 (mod the label count), so
        # every label has an owner once num_clients + k - 1 >= labels. "random" would leave a
        # label without any owner for many seeds, and its examples would belong to no client.
        present = len(np.unique(labels))
        if num_clients + classes_per_client - 1 < present:
            raise DataError(
                f"pathological with num-clients={num_clients} and classes-per-client="
                f"{classes_per_client} reaches only {num_clients + classes_per_client - 1} of "
                f"{present} labels; need num-clients + classes-per-client - 1 >= {present}"
            )
        partitioner = PathologicalPartitioner(
            num_partitions=num_clients, partition_by="label",
            num_classes_per_partition=classes_per_client,
            class_assignment_mode="deterministic", seed=seed,
        )
    partitioner.dataset = datasets.Dataset.from_dict(
        {"label": labels, "idx": np.arange(n, dtype=np.int64)}
    )
    try:
        with warnings.catch_warnings():
            # Dirichlet warns on every redraw; a failure after the last one is reported below.
            warnings.simplefilter("ignore", UserWarning)
            parts = tuple(
                # Arrow -> numpy is ~20x faster than going through the Column object.
                partitioner.load_partition(cid).with_format("arrow")["idx"].to_numpy()
                .astype(np.int64)
                for cid in range(num_clients)
            )
    except ValueError as exc:
        hint = {
            "dirichlet": "use a larger alpha, fewer clients or a smaller min-partition-size",
            "pathological": "use fewer clients or a smaller classes-per-client",
        }.get(scheme, "use fewer clients")
        raise DataError(
            f"{scheme} partition of {n} examples into num-clients={num_clients} (alpha={alpha}, "
            f"classes-per-client={classes_per_client}, min-partition-size={min_partition_size}) "
            f"failed: {hint} ({exc})"
        ) from exc
    _check_partitions(parts, n, min_partition_size, scheme)
    return parts


def _check_partitions(
    parts: tuple[np.ndarray, ...], n: int, min_partition_size: int, scheme: str
) -> None:
    """Raise DataError unless ``parts`` cover range(n) exactly once with no client too small."""
    flat = np.concatenate(parts) if parts else np.empty(0, np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= n):
        raise DataError(f"{scheme} partitions hold indices outside [0, {n}) (internal error)")
    hits = np.bincount(flat, minlength=n)  # (n,) how many clients hold each example
    if (hits != 1).any():
        raise DataError(
            f"{scheme} partitions cover {int((hits == 0).sum())} examples zero times and "
            f"{int((hits > 1).sum())} more than once; expected each of {n} once (internal error)"
        )
    sizes = [len(p) for p in parts]
    smallest = int(np.argmin(sizes))
    if sizes[smallest] < min_partition_size:
        fixes = [f"fewer clients (the private pool has {n} examples)", "a smaller num-public"]
        if scheme == "dirichlet":
            fixes.append("a larger alpha")
        if min_partition_size > 1:
            fixes.append("a smaller min-partition-size")
        raise DataError(
            f"{scheme} partition gives client {smallest} only {sizes[smallest]} examples "
            f"(min-partition-size={min_partition_size}); use {', or '.join(fixes)}"
        )


# ---------------------------------------------------------------------------------------------
# Readers. Each returns (x, y, test, num_classes) with x (N, *input_shape) float32 normalised,
# y (N,) int64, and test = (test_x, test_y) for an official test split, else None.

_Source = tuple[np.ndarray, np.ndarray, "tuple[np.ndarray, np.ndarray] | None", int]


@functools.lru_cache(maxsize=2)
def _load_source(dataset: str, data_dir: str, download: bool) -> _Source:
    """Read one built-in dataset; cached so several seeds do not re-read and re-normalise."""
    if dataset == "digits":
        from sklearn.datasets import load_digits  # ships with scikit-learn, no download

        bunch = load_digits()
        x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8), 0..16 -> [0, 1]
        return x, bunch.target.astype(np.int64), None, 10
    if dataset in _TORCHVISION_FOLDER:
        return _load_mnist_like(dataset, Path(data_dir), download)
    return _load_cifar10(Path(data_dir), download)


def _normalise(x_uint8: np.ndarray, dataset: str) -> np.ndarray:
    """(N, C, H, W) uint8 -> float32 scaled to [0, 1], then standardised per channel."""
    mean, std = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in _MEAN_STD[dataset])
    return (x_uint8.astype(np.float32) / np.float32(255.0) - mean) / std


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

