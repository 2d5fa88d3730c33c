"""Parameters of a secure-aggregation round: one frozen dataclass, checked on construction.

Owns: defaults and validation of k (neighbours), t (threshold), the fixed-point encoding and
the consistency-check switch, and the digest that client and server compare at set-up so a
client never runs a round under parameters it did not agree to.
Must not touch: protocol state, keys, I/O.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from fedkd.secagg.quantize import MAX_BITS, MIN_BITS, FixedPoint

MAX_SESSION_ID_BYTES = 256


def default_neighbors(num_clients: int) -> int:
    """k = 2 * ceil(log2 n), capped at n - 1 (then it is classic SecAgg).

    A heuristic in the O(log n) family of Bell et al.; raise k (and t) for settings with many
    corrupt clients or heavy drop-out. Always even or n - 1, as the Harary graph needs.
    """
    return min(num_clients - 1, 2 * math.ceil(math.log2(num_clients)))


def default_threshold(neighbors: int) -> int:
    """The smallest t > k / 2: an honest majority of a neighbourhood is needed to unmask."""
    return neighbors // 2 + 1


@dataclass(frozen=True)
class SecAggConfig:
    """One round's parameters.

    max_clients: if set, sessions with more clients are refused and the bit width is checked
        against it up front (the session always re-checks against its real client count).
    neighbors: k, each client's number of neighbours; None -> default_neighbors(n).
        Must be even and < n - 1, or exactly n - 1 (classic SecAgg, everyone pairs with everyone).
    threshold: t, shares needed to rebuild a client's secret; None -> k // 2 + 1. k/2 < t <= k.
    bit_width: b, the ring is Z_{2^b}; the masked vector travels as b bits per value.
    clip, scale: values are clipped to [-clip, clip] and encoded with `scale` steps per unit.
    stochastic_rounding: unbiased random rounding instead of round-to-nearest.
    consistency_check: clients sign the survivor set (Ed25519) before revealing shares.
    """

    max_clients: int | None = None
    neighbors: int | None = None
    threshold: int | None = None
    bit_width: int = 32
    clip: float = 1.0
    scale: float = 2.0**16
    stochastic_rounding: bool = False
    consistency_check: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad value and its valid range."""
        if not (isinstance(self.bit_width, int) and MIN_BITS <= self.bit_width <= MAX_BITS):
            raise ValueError(f"bit_width must be an int in {MIN_BITS}..{MAX_BITS}, got {self.bit_width!r}")
        codec = self.fixed_point  # checks clip and scale
        if self.max_clients is not None:
            if not (isinstance(self.max_clients, int) and self.max_clients >= 2):
                raise ValueError(f"max_clients must be an int >= 2 or None, got {self.max_clients!r}")
            codec.check_capacity(self.max_clients)
        if self.neighbors is not None:
            if not (isinstance(self.neighbors, int) and self.neighbors >= 1):
                raise ValueError(f"neighbors must be an int >= 1 or None, got {self.neighbors!r}")
            if self.max_clients is not None and self.neighbors > self.max_clients - 1:
                raise ValueError(f"neighbors must be in 1..{self.max_clients - 1} for max_clients="
                                 f"{self.max_clients}, got {self.neighbors}")
        if self.threshold is not None:
            if not (isinstance(self.threshold, int) and self.threshold >= 1):
                raise ValueError(f"threshold must be an int >= 1 or None, got {self.threshold!r}")
            if self.neighbors is not None:
                self._check_threshold(self.neighbors, self.threshold)
        for name in ("stochastic_rounding", "consistency_check"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @staticmethod
    def _check_threshold(k: int, t: int) -> None:
        if not k / 2 < t <= k:
            raise ValueError(f"threshold must be in {k // 2 + 1}..{k} (more than half of the {k} "
                             f"neighbours, at most all of them), got {t}")

    @property
    def fixed_point(self) -> FixedPoint:
        return FixedPoint(clip=self.clip, scale=self.scale, bit_width=self.bit_width)

    def resolve(self, num_clients: int, dim: int) -> tuple[int, int]:
        """(k, t) for a session of `num_clients` clients and vectors of length `dim`; checks that
        the session fits the config and that its sum cannot wrap around."""
        if not (isinstance(num_clients, int) and num_clients >= 2):
            raise ValueError(f"a session needs at least 2 clients, got {num_clients!r}")
        if self.max_clients is not None and num_clients > self.max_clients:
            raise ValueError(f"session has {num_clients} clients, more than max_clients={self.max_clients}")
        if not (isinstance(dim, int) and dim >= 1):
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        k = default_neighbors(num_clients) if self.neighbors is None else self.neighbors
        if not (k == num_clients - 1 or (k % 2 == 0 and 2 <= k < num_clients - 1)):
            raise ValueError(f"neighbors must be {num_clients - 1} (n-1) or an even number in "
                             f"2..{num_clients - 2} for {num_clients} clients, got {k}")
        t = default_threshold(k) if self.threshold is None else self.threshold
        self._check_threshold(k, t)
        self.fixed_point.check_capacity(num_clients)
        return k, t

    def digest(self, session_id: bytes, client_ids: tuple[int, ...], dim: int) -> bytes:
        """SHA-256 over everything both sides must agree on for a session."""
        k, t = self.resolve(len(client_ids), dim)
        text = (f"k={k};t={t};b={self.bit_width};clip={float(self.clip)!r};scale={float(self.scale)!r};"
                f"sr={self.stochastic_rounding};cc={self.consistency_check};dim={dim};"
                f"ids={','.join(map(str, client_ids))}")
        return hashlib.sha256(session_id + b"\x00" + text.encode()).digest()
