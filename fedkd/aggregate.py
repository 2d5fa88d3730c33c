"""The aggregation seam: per-client vectors in, their sum and count out.

Owns: `plain_sum`, the input checks every aggregator applies (finite values, one shape), the
`Aggregate` result, and the settings of the secure sum that a run's Config implies
(`secagg_config`: the clip range per ensemble rule, the fixed-point scale, the ring; the same on
client and server, so neither takes them from the other). The server builds the ensemble teacher from `Aggregate.total / count` only,
so a secure-sum protocol can replace `plain_sum` without the rest of fedkd noticing.
Must not touch: what the vectors mean (that is `fedkd.distill`), Flower, or files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from fedkd.config import Config
from fedkd.secagg import SecAggConfig


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


# ---- the secure sum's settings ------------------------------------------------------------------

class SecureAggregationError(RuntimeError):
    """The secure sum could not be completed; the message names the stage and the shortfall."""


def auto_clip(config: Config, num_classes: int) -> float:
    """The smallest clip range that holds every value the ensemble rule uploads."""
    if config.secagg_clip > 0:
        return config.secagg_clip
    if config.ensemble == "geometric":
        from fedkd.distill import LOG_PROB_FLOOR  # here, not above: a stage's process needs no torch

        return -LOG_PROB_FLOOR  # log-probabilities in [LOG_PROB_FLOOR, 0]
    if config.ensemble == "logits":
        return 50.0  # logits are unbounded: clipped values are counted and reported
    return float(num_classes) if config.vote_rule == "class-share" else 1.0  # weights <= K


MAX_AUTO_SCALE = 2.0**24  # float32 carries 24 significant bits: finer steps add nothing


def auto_scale(config: Config, clip: float) -> float:
    """The finest power-of-two scale whose codes, summed over a round's n clients (its cohort:
    `clients-per-round`, or `num-clients`), fit the bit width: n * ceil(2 * clip * scale) < 2^b.
    The quantisation error of a summed value is then at most n / (2 * scale)."""
    if config.secagg_scale > 0:
        return config.secagg_scale
    room = (2**config.ring_bits - 1) / (config.cohort_size * 2 * clip)
    exponent = math.floor(math.log2(room)) - 1  # one bit spare for the ceiling
    return float(min(2.0**exponent, MAX_AUTO_SCALE))


def secagg_config(config: Config, num_classes: int, server_round: int = 1) -> SecAggConfig:
    """With DP on, clients send integers (rounded soft labels plus noise shares): scale 1 keeps
    them exact, and the clip range is the DP value range, so the ring sum cannot wrap."""
    if config.dp_enabled:
        from fedkd.task import dp_params  # here, not above: a stage's process needs no torch

        clip, scale = float(dp_params(config, num_classes, server_round).value_range), 1.0
    else:
        clip = auto_clip(config, num_classes)
        scale = auto_scale(config, clip)
    try:
        return SecAggConfig(
            neighbors=config.secagg_neighbors or None,
            threshold=config.secagg_threshold or None,
            bit_width=config.ring_bits,
            clip=clip,
            scale=scale,
            consistency_check=config.secagg_consistency_check,
            max_colluders=None if config.secagg_max_colluders < 0 else config.secagg_max_colluders,
        )
    except ValueError as exc:
        raise SecureAggregationError(f"secure-aggregation settings do not fit: {exc}") from None
