"""How the private pool is divided among clients: the iid, dirichlet and pathological schemes.

Owns: ``PARTITIONS``; the choice and settings of the flwr_datasets partitioner for each scheme;
and the check that the partitions cover the pool exactly once with no client below
``min_partition_size``. Must not touch: which examples are in the pool (fedkd.data.splits),
the arrays themselves (only labels and positions come here), torch, Flower messaging.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from fedkd.errors import DataError

if TYPE_CHECKING:  # spec.py imports PARTITIONS from here
    from fedkd.data.spec import DataSpec

PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "pathological")


def client_partitions(labels: np.ndarray, spec: DataSpec) -> tuple[np.ndarray, ...]:
    """Partition positions 0..len(labels)-1 across ``spec.num_clients`` by ``spec.partition``.

    labels: (n,) int64, the private pool's labels in its (seeded, shuffled) order. Returns one
    int64 index array per client, disjoint, covering range(n). The partitioners work on a Hugging
    Face Dataset: we hand them only the label column plus an ``idx`` column (row i holds i; no
    images), and read ``idx`` back from each partition.
    """
    import datasets  # imported here: `datasets` takes ~2 s to import, and only partitioning needs it

    partitioner = _partitioner(labels, spec)
    partitioner.dataset = datasets.Dataset.from_dict(
        {"label": labels, "idx": np.arange(len(labels), dtype=np.int64)}
    )
    parts = _load_partitions(partitioner, len(labels), spec)
    _check_partitions(parts, len(labels), spec.min_partition_size, spec.partition)
    return parts


def _partitioner(labels: np.ndarray, spec: DataSpec) -> Any:
    """The flwr_datasets partitioner of ``spec.partition``, not yet given its dataset."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner, IidPartitioner, PathologicalPartitioner,
    )

    if spec.partition == "iid":
        return IidPartitioner(num_partitions=spec.num_clients)
    if spec.partition == "dirichlet":
        # self_balancing=False: shares follow Dirichlet(alpha) as in Hsu et al. 2019, not
        # flattened by capping clients at the mean size.
        return DirichletPartitioner(
            num_partitions=spec.num_clients, partition_by="label", alpha=spec.alpha,
            min_partition_size=spec.min_partition_size, self_balancing=False, seed=spec.seed,
        )
    # "deterministic": client c holds labels c, c+1, ..., c+k-1 (mod the label count), so
    # every label has an owner once num_clients + k - 1 >= labels. "random" would leave a
    # label without any owner for many seeds, and its examples would belong to no client.
    present = len(np.unique(labels))
    reach = spec.num_clients + spec.classes_per_client - 1
    if reach < present:
        raise DataError(
            f"pathological with num-clients={spec.num_clients} and classes-per-client="
            f"{spec.classes_per_client} reaches only {reach} of "
            f"{present} labels; need num-clients + classes-per-client - 1 >= {present}"
        )
    return PathologicalPartitioner(
        num_partitions=spec.num_clients, partition_by="label",
        num_classes_per_partition=spec.classes_per_client,
        class_assignment_mode="deterministic", seed=spec.seed,
    )


def _load_partitions(partitioner: Any, n: int, spec: DataSpec) -> tuple[np.ndarray, ...]:
    """Every client's ``idx`` column; a partitioner's failure becomes one DataError with a fix."""
    try:
        with warnings.catch_warnings():
            # Dirichlet warns on every redraw; a failure after the last one is reported below.
            warnings.simplefilter("ignore", UserWarning)
            return tuple(
                # Arrow -> numpy is ~20x faster than going through the Column object.
                partitioner.load_partition(cid).with_format("arrow")["idx"].to_numpy()
                .astype(np.int64)
                for cid in range(spec.num_clients)
            )
    except ValueError as exc:
        hint = {
            "dirichlet": "use a larger alpha, fewer clients or a smaller min-partition-size",
            "pathological": "use fewer clients or a smaller classes-per-client",
        }.get(spec.partition, "use fewer clients")
        raise DataError(
            f"{spec.partition} partition of {n} examples into num-clients={spec.num_clients} "
            f"(alpha={spec.alpha}, classes-per-client={spec.classes_per_client}, "
            f"min-partition-size={spec.min_partition_size}) failed: {hint} ({exc})"
        ) from exc


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
