"""The data layer: a dataset, named or the user's own, read into one layout and split into test,
public and per-client private parts.

Owns: the package's public names, below; each fact lives in one of its modules:
  spec.py       DataSpec, every setting that determines the splits: checked, canonical, the cache key
  splits.py     load_splits, Splits, the split order, the caches (in process and FEDKD_SPLITS_CACHE),
                describe_splits
  partition.py  PARTITIONS; the iid / dirichlet / pathological partitions of the private pool
  builtin.py    DATASETS; digits, MNIST / Fashion-MNIST (IDX files), CIFAR-10 (python batches)
  source.py     a user input's dataset string (SOURCE?key=value) and which reader takes it
  layout.py     what every reader returns; user inputs' layout (channels first) and scaling rules
  npz.py, hf.py (Hub, save_to_disk, parquet), folders.py: one reader per user source kind
Must not touch: torch, Flower messaging, models or training state. Importing the package costs
numpy and the standard library only (sklearn, datasets, flwr_datasets and PIL load when a reader
or a partitioner needs them), so fedkd.config takes DATASETS and PARTITIONS from here.
"""

from fedkd.data.builtin import DATASETS, read_cifar_batch, read_idx
from fedkd.data.partition import PARTITIONS
from fedkd.data.spec import DataSpec
from fedkd.data.splits import SPLITS_CACHE_ENV, Splits, describe_splits, load_splits
from fedkd.errors import DataError  # owned by fedkd.errors; kept here for callers that import it from fedkd.data

__all__ = [
    "DATASETS", "PARTITIONS", "SPLITS_CACHE_ENV", "DataError", "DataSpec", "Splits",
    "describe_splits", "load_splits", "read_cifar_batch", "read_idx",
]
