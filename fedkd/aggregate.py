"""The aggregation seam: per-client vectors in, their sum and count out.

Owns: `plain_sum`, the input checks every aggregator applies (finite values, one shape), and the
`Aggregate` result. The server builds the ensemble teacher from `Aggregate.total / count` only,
so a secure-sum protocol can replace `plain_sum` without the rest of fedkd noticing.
Must not touch: what the vectors mean (that is `fedkd.distill`), Flower, or files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


class ContributionError(ValueError):
    """A client's contribution cannot be summed; the message names the client."""


@dataclass(frozen=True)
class Aggregate:
    total: np.ndarray  # (d,) float64: sum of the contributors' vectors
    count: int  # how many vectors went into `total`
    contributors: tuple[int, ...]  # client (partition) ids whose vectors were summed, ascending
    details: dict = field(default_factory=dict)  # aggregator-specific figures (e.g. secure-agg stages)


def check_contribution(client_id: int, vector: np.ndarray, length: int | None = None) -> None:
    """Refuse a vector that is not 1-D, has the wrong length, or holds NaN/inf."""
    if vector.ndim != 1:
        raise ContributionError(f"client {client_id} sent an array of shape {vector.shape}; expected a 1-D vector")
    if length is not None and len(vector) != length:
        raise ContributionError(f"client {client_id} sent {len(vector)} values; expected {length}")
    bad = ~np.isfinite(vector)
    if bad.any():
        raise ContributionError(
            f"client {client_id} produced {int(bad.sum())} non-finite prediction values (NaN or inf); "
            "its teacher has diverged (try a smaller lr)"
        )


def plain_sum(vectors: Mapping[int, np.ndarray]) -> Aggregate:
    """Sum in float64, in ascending client order so the result does not depend on arrival order."""
    if not vectors:
        raise ContributionError("no client contributed a vector this round")
    ids = sorted(vectors)
    length = len(vectors[ids[0]])
    total = np.zeros(length, dtype=np.float64)
    for cid in ids:
        check_contribution(cid, vectors[cid], length)
        total += vectors[cid]
    return Aggregate(total=total, count=len(ids), contributors=tuple(ids))
