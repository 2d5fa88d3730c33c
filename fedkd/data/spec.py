"""DataSpec: every setting that determines the splits, checked once and kept in one canonical form.

Owns: the data settings, their checks (one DataError naming the value and the
valid range), and their normalisation: a user input's local path and the data folder made
absolute, numbers made plain float / int, so that equal requests are equal specs. A DataSpec is
the one argument of ``load_splits`` and its cache key, in process and on disk.

Must not touch: the data itself (it only asks whether a user's path exists), splits, torch,
Flower. Its defaults are the run's (Config's): ``from_config`` and ``of`` read a Config, importing
fedkd.config only when called, since fedkd.config imports this package for DATASETS and PARTITIONS.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedkd.data.builtin import DATASETS, DEFAULT_DATA_DIR
from fedkd.data.partition import PARTITIONS
from fedkd.data.source import canonical
from fedkd.errors import DataError, require_clients

if TYPE_CHECKING:
    from fedkd.config import Config


@dataclass(frozen=True)
class DataSpec:
    """What to split and how. Built from a run's Config, or with `of` from keywords (what they
    leave out takes Config's defaults).

    dataset: one of DATASETS, or a user input read by fedkd.data.source: a ``.npz`` (``x``/``y``
        or Keras's ``x_train``/``y_train``/``x_test``/``y_test``), a ``.parquet`` file, a
        ``save_to_disk``, parquet or image folder, or ``hf:NAME`` (the Hub or its cache), each
        optionally followed by ``?image=COL&label=COL&train=SPLIT&test=SPLIT&subset=NAME``.
    partition: "iid" (random equal shards), "dirichlet" (per-label client shares drawn from
        Dirichlet(alpha); small alpha = skewed), or "pathological" (each client holds exactly
        ``classes_per_client`` labels; client c gets labels c, c+1, ... mod num_classes).
    min_partition_size: every client gets at least this many private examples. "dirichlet"
        redraws up to 10 times to meet it; the other schemes fail with DataError if they miss it.
    test_fraction: used only where there is no official test split (digits, most user inputs).
    data_dir: where mnist / fashion-mnist / cifar10 files live (default ``./data``); kept absolute.
    download: if the files are missing, fetch them with torchvision (needs torchvision + internet).
    """

    # The field order is the on-disk cache's key order (splits.py hashes astuple(spec)): keep it,
    # or every node's cached splits are built again once.
    dataset: str
    num_clients: int
    partition: str
    alpha: float
    classes_per_client: int
    num_public: int
    test_fraction: float
    seed: int
    data_dir: str | None  # None: DEFAULT_DATA_DIR; always an absolute path once built
    download: bool
    min_partition_size: int = 1  # a data-only setting (no run option): at least this many per client

    def __post_init__(self) -> None:
        _check(self)
        normal = dict(
            dataset=self.dataset if self.dataset in DATASETS else canonical(self.dataset),
            num_clients=int(self.num_clients), alpha=float(self.alpha),
            classes_per_client=int(self.classes_per_client), num_public=int(self.num_public),
            test_fraction=float(self.test_fraction), seed=int(self.seed),
            data_dir=str(Path(self.data_dir if self.data_dir is not None else DEFAULT_DATA_DIR)
                         .expanduser().resolve()),
            download=bool(self.download), min_partition_size=int(self.min_partition_size),
        )
        for name, value in normal.items():
            object.__setattr__(self, name, value)  # frozen: set once, here, before anyone sees it

    @classmethod
    def from_config(cls, config: Config) -> DataSpec:
        """The data settings of a run (every other Config field leaves the splits as they are)."""
        return cls(
            dataset=config.dataset, num_clients=config.num_clients, partition=config.partition,
            alpha=config.alpha, classes_per_client=config.classes_per_client,
            num_public=config.num_public, test_fraction=config.test_fraction, seed=config.seed,
            data_dir=config.data_dir or None, download=config.download,
        )

    @classmethod
    def of(cls, dataset: str | None = None, **settings) -> DataSpec:
        """A spec from keywords (DataSpec's field names); the rest are the run defaults."""
        from fedkd.config import Config  # here, not above: fedkd.config imports this package

        base = dict(cls.from_config(Config()).__dict__, data_dir=None)  # None: the default folder
        return cls(**{**base, **({} if dataset is None else {"dataset": dataset}), **settings})

    def key(self) -> tuple:
        """The plain tuple the on-disk cache names and checks its files by."""
        return astuple(self)


def _check(spec: DataSpec) -> None:
    """Raise DataError naming the first setting out of range (checked before normalising)."""
    dataset, alpha, seed = spec.dataset, spec.alpha, spec.seed
    if not isinstance(dataset, str) or not dataset:
        raise DataError(f"dataset={dataset!r} must be a name ({', '.join(DATASETS)}), a path or hf:NAME")
    if spec.partition not in PARTITIONS:
        raise DataError(f"unknown partition {spec.partition!r}; choose one of {', '.join(PARTITIONS)}")
    if not (isinstance(alpha, numbers.Real) and math.isfinite(alpha) and alpha > 0):
        raise DataError(f"alpha={alpha!r} must be a finite number > 0 (smaller = more skewed)")
    require_clients("num-clients", spec.num_clients)
    if spec.num_public <= 0:
        raise DataError(f"num-public={spec.num_public} must be at least 1")
    if not 0 < spec.test_fraction < 1:
        raise DataError(f"test-fraction={spec.test_fraction} must lie strictly between 0 and 1")
    if spec.min_partition_size < 1:
        raise DataError(f"min-partition-size={spec.min_partition_size} must be at least 1")
    if not (isinstance(seed, numbers.Integral) and seed >= 0):
        raise DataError(f"seed={seed!r} must be a non-negative integer")
