"""The test / public / private splits of one DataSpec, and the caches that keep them.

Owns: ``Splits``; ``load_splits``, the one entry point the rest of fedkd needs; the split order
below; standardising a user input with constants measured on its public split; the in-process
cache and the on-disk one (``FEDKD_SPLITS_CACHE``); and ``describe_splits``, the plain record of
how an input was resolved. The readers (fedkd.data.builtin, fedkd.data.source) and the partition
schemes (fedkd.data.partition) are their own modules.

Must not touch: torch, Flower messaging, models or training state, and the network (the readers
own the two opt-in exceptions). Every result is a pure function of the DataSpec and the files on
disk, numpy in and numpy out.

Split order, the same for every dataset:
  1. test:    the official test split (mnist, fashion-mnist, cifar10, and user inputs that
              have one), or a stratified, seeded ``test_fraction`` of the examples;
  2. public:  ``num_public`` examples drawn stratified and seeded from what is left;
  3. private: the rest, shuffled with the seed and partitioned across ``num_clients``.
The three are disjoint and together hold every example exactly once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedkd.data import builtin, source
from fedkd.data.builtin import DATASETS
from fedkd.data.layout import RawInput, fit_scaling
from fedkd.data.partition import client_partitions
from fedkd.data.spec import DataSpec
from fedkd.errors import DataError

# A folder where splits are also kept between processes, one .npz per DataSpec. A deployed
# SuperNode (`fedkd deploy` sets this) starts a fresh process for every message; without the
# folder each train message would import sklearn and split the data again (5 s here).
SPLITS_CACHE_ENV = "FEDKD_SPLITS_CACHE"
_SPLIT_ARRAYS = ("private_x", "private_y", "public_x", "public_y", "test_x", "test_y")
_KEYWORDS = object()  # load_splits' "no DataSpec given": build one from the keywords


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


def load_splits(spec: DataSpec | str = _KEYWORDS, /, **settings: Any) -> Splits:  # type: ignore[assignment]
    """The splits of ``spec``: ``load_splits(DataSpec(...))``, or ``load_splits("digits",
    num_clients=3)``, whose arguments are DataSpec's fields (the rest take Config's defaults), checked the same way.

    The same spec always gives bitwise-identical arrays. Results are cached in-process (every
    simulated client calls this), so all arrays come back read-only; with FEDKD_SPLITS_CACHE set,
    the splits of a built-in dataset are also kept on disk, for the next process.
    """
    if not isinstance(spec, DataSpec):
        spec = DataSpec.of(**settings) if spec is _KEYWORDS else DataSpec.of(spec, **settings)
    elif settings:
        raise TypeError(f"load_splits takes a DataSpec or keywords, not both ({', '.join(settings)})")
    folder = os.environ.get(SPLITS_CACHE_ENV)
    if folder and spec.dataset in DATASETS:  # a user's file may change under its name; a built-in dataset does not
        return _splits_on_disk(folder, spec)
    return _build_splits(spec)


# ---------------------------------------------------------------------------------------------
# Building the splits


# maxsize=4: a CIFAR-10 Splits holds ~0.7 GB, and a run uses one configuration at a time.
@functools.lru_cache(maxsize=4)
def _build_splits(spec: DataSpec) -> Splits:
    """The cached body of load_splits, in the split order of the module docstring."""
    raw = _read(spec)
    _check_classes_per_client(spec, raw)
    rng = np.random.default_rng(spec.seed)  # one generator, used in a fixed order: every draw follows from the seed
    train, (test_x, test_y), test_split = _test_split(raw, spec.test_fraction, rng)
    _check_room(spec, raw.name, len(train))
    public_idx, private_idx = _stratified_take(raw.y, train, spec.num_public, rng)
    # IidPartitioner takes contiguous shards of this order, and the other partitioners split each
    # label's examples in this order, so the seed reaches all of them.
    private_idx = rng.permutation(private_idx)
    private_y = raw.y[private_idx]  # (N_priv,)
    x, test_x, scaling = _scaled(raw, public_idx, test_x)
    splits = Splits(
        name=raw.name, num_classes=raw.num_classes, input_shape=tuple(x.shape[1:]),
        private_x=x[private_idx], private_y=private_y, partitions=client_partitions(private_y, spec),
        public_x=x[public_idx], public_y=raw.y[public_idx], test_x=test_x, test_y=test_y,
        resolved={"dataset": spec.dataset, **raw.info, "test_split": test_split, **scaling},
    )
    # Cached and shared by every caller: make the arrays read-only so none can corrupt them.
    for arr in (*(getattr(splits, name) for name in _SPLIT_ARRAYS), *splits.partitions):
        arr.setflags(write=False)
    return splits


def _read(spec: DataSpec) -> RawInput:
    """A built-in dataset (already scaled) or a user input (scaled later, on its public split)."""
    if spec.dataset in DATASETS:
        return builtin.read(spec.dataset, spec.data_dir, spec.download)
    return source.read_input(spec.dataset)


def _check_classes_per_client(spec: DataSpec, raw: RawInput) -> None:
    k, num_classes = spec.classes_per_client, raw.num_classes
    if spec.partition == "pathological" and not 1 <= k <= num_classes:
        raise DataError(
            f"classes-per-client={k} must lie in [1, {num_classes}] "
            f"for {raw.name} ({num_classes} classes)"
        )


def _test_split(
    raw: RawInput, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], str]:
    """Step 1: (train, (test_x, test_y), how). ``train`` indexes raw.x / raw.y; an official test
    split is kept apart from them, else a stratified ``test_fraction`` of them is taken."""
    if raw.test is not None:
        return np.arange(len(raw.y)), raw.test, "official"
    n = len(raw.y)
    n_test = round(test_fraction * n)
    if not 1 <= n_test < n:
        raise DataError(
            f"test-fraction={test_fraction} of {n} examples gives {n_test} test "
            f"examples; choose a fraction that leaves between 1 and {n - 1}"
        )
    test_idx, train = _stratified_take(raw.y, np.arange(n), n_test, rng)
    return train, (raw.x[test_idx], raw.y[test_idx]), f"test-fraction={test_fraction}"


def _check_room(spec: DataSpec, name: str, num_train: int) -> None:
    """Step 2's precondition: the public set leaves min_partition_size examples for every client."""
    clients, least = spec.num_clients, spec.min_partition_size
    needed = clients * least
    if needed >= num_train:
        raise DataError(
            f"num-clients={clients} x min-partition-size={least} = {needed} "
            f"private examples, but {name} has only {num_train} training examples and the "
            "public set needs at least 1; use fewer clients or a smaller min-partition-size"
        )
    available = num_train - needed
    if spec.num_public > available:
        raise DataError(
            f"num-public={spec.num_public} is more than the {available} available ({num_train} "
            f"training examples, keeping {least} for each of {clients} clients)"
        )


def _scaled(
    raw: RawInput, public_idx: np.ndarray, test_x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(x, test_x, facts): a user input scaled with constants measured on its public split
    (fedkd.data.layout's rules); a built-in dataset as it is, with no facts to add."""
    if raw.kind == "fixed":
        return raw.x, test_x, {}
    scaling = fit_scaling(raw.kind, raw.x[public_idx])
    facts = {"scaling": scaling.describe(), "mean": scaling.mean and list(scaling.mean),
             "std": scaling.std and list(scaling.std),
             "stats_from": "public set" if scaling.mean else None}
    return scaling.apply(raw.x), scaling.apply(test_x), facts


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


# ---------------------------------------------------------------------------------------------
# Splits kept on disk between processes


@functools.lru_cache(maxsize=4)
def _splits_on_disk(folder: str, spec: DataSpec) -> Splits:
    """The splits of ``spec`` from ``folder``, built and written there (atomically: concurrent
    nodes may race) when missing or unreadable."""
    key = spec.key()
    path = Path(folder) / f"splits-{hashlib.sha256(repr(key).encode()).hexdigest()[:24]}.npz"
    try:
        return _read_splits_file(path, key)
    except (OSError, ValueError, KeyError):
        pass  # missing, partly written by an older fedkd, or corrupt: build it again
    splits = _build_splits(spec)
    _write_splits_file(path, key, splits)
    return splits


def _read_splits_file(path: Path, key: tuple) -> Splits:
    """The Splits in ``path``, read-only; ValueError if it was written for another key."""
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


def _write_splits_file(path: Path, key: tuple, splits: Splits) -> None:
    """Write ``splits`` to ``path`` through a temporary file, so a reader never sees half of it."""
    meta = {"key": list(key), "name": splits.name, "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape), "num_clients": splits.num_clients, "resolved": dict(splits.resolved)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), **{name: getattr(splits, name) for name in _SPLIT_ARRAYS},
             **{f"part-{i}": p for i, p in enumerate(splits.partitions)})
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# What was resolved


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
