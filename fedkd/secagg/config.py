"""Parameters of a secure-aggregation round: one frozen dataclass, checked on construction.

Owns: defaults and validation of k (neighbours), t (threshold), c (colluders tolerated), m (the
fewest live partners a client masks with), the fixed-point encoding and the consistency-check
switch; the `Pins` a node holds independently of the server; and the digest that client and server
compare at set-up so a client never runs a round under parameters it did not agree to.
Must not touch: protocol state, keys, I/O.

The bound (proved in docs/secagg.md, "Malicious server"): a client v masks with the set M(v) of
neighbours whose envelopes reached it, |M(v)| >= m; each neighbour answers one unmask request and
reveals, about v, either its share of v's self-mask seed (v listed as survivor) or its own pairwise
seed with v (v listed as dropped), never both; v itself reveals pairwise seeds only while at least m
of M(v) are listed as survivors. Recovering v's vector needs t seed shares from N(v) and every
pairwise seed of v with an honest partner; the honest partners that keep their seed are at least
m - c, so at most k - (m - c) neighbours are left to give seed shares, which is fewer than t when

    m + t >= k + c + 1.

Defaults: c = 2 for n >= 10 (0 for smaller sessions), t = floor((k + c) / 2) + 1, m = k + c + 1 - t
(so m <= t). Drop-outs tolerated per neighbourhood: k - max(t, m) before masked input (the server
excludes a client left with fewer than max(t, m) live neighbours), k - t after it.
n = 100 (k = 14): t = 9, m = 8. n = 1000 (k = 20): t = 12, m = 11.

With the consistency check on, a second bound covers sums (docs/secagg.md, "Sums of honest
clients"): whatever the server does with up to c colluders, any sum of honest clients' inputs it
learns includes every honest survivor of the one survivor list that gathered a quorum of the
session's committee, so at least min_survivors(n, c) - c = floor((n - c) / 2) + 1 honest clients.
Its pieces: the committee and its quorum (`committee`, `quorum`), the fewest survivors a client
accepts (`min_survivors`), and the spread of the survivors on the ring (graph.thinnest_window).
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


def default_colluders(num_clients: int, neighbors: int) -> int:
    """c = 2 for n >= 10 (k >= 8 there); 0 below, where k <= 8 leaves no room to tolerate colluders
    and drop-outs at once (n = 4, c = 1 would need every neighbour at every stage)."""
    return min(2, neighbors - 2) if num_clients >= 10 else 0


def default_threshold(neighbors: int, colluders: int = 0) -> int:
    """t = floor((k + c) / 2) + 1: more than half of a neighbourhood, and with m = k + c + 1 - t
    the two drop-out budgets (k - m before masked input, k - t after) differ by at most one."""
    return (neighbors + colluders) // 2 + 1


def min_partners(neighbors: int, threshold: int, colluders: int) -> int:
    """m = k + c + 1 - t, the fewest live partners a client masks with (see the module doc)."""
    return neighbors + colluders + 1 - threshold


COMMITTEE_PER_COLLUDER = 8  # committee size K = min(n, 8 (c + 1)): n = 100, c = 2 gives K = 24


def committee(client_ids: tuple[int, ...], colluders: int) -> tuple[int, ...]:
    """The clients whose signatures on the survivor list count towards the quorum: the K = min(n,
    8 (c + 1)) lowest ids of the session (public, so client and server agree without talking).
    Any fixed set works for the uniqueness argument; K only sets how many of its members may drop
    out (K - quorum) and how many signatures each client verifies (quorum)."""
    return tuple(sorted(client_ids)[: COMMITTEE_PER_COLLUDER * (colluders + 1)])


def quorum(committee_size: int, colluders: int) -> int:
    """floor((K + c) / 2) + 1 signatures, more than (K + c) / 2: two different lists that both had a
    quorum would share more than c signers, so an honest member would have signed both."""
    return (committee_size + colluders) // 2 + 1


def min_survivors(num_clients: int, colluders: int) -> int:
    """floor((n + c) / 2) + 1: a client reveals nothing under a survivor list with fewer survivors,
    so the honest survivors are more than (n - c) / 2."""
    return (num_clients + colluders) // 2 + 1


@dataclass(frozen=True)
class Pins:
    """What a node requires of any session, whatever the server's messages say. The defaults only
    refuse sessions under 3 clients; a deployment pins its own (fedkd.apps.secure.node_pins).

    min_clients: sessions with fewer clients are refused (a 2-client sum is the other's vector).
    max_colluders: the session's k, t, m must tolerate this many colluders (m + t >= k + c + 1),
        and k must be at least c + 2 (unless k = n - 1); None: default_colluders for the session's n
        and the k the node itself would use (default_neighbors(n)), never the server's k.
    require_check: the consistency check must be on.
    """

    min_clients: int = 3
    max_colluders: int | None = 0
    require_check: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.min_clients, int) and self.min_clients >= 3):
            raise ValueError(f"min_clients must be an int >= 3, got {self.min_clients!r}")
        if self.max_colluders is not None and not (isinstance(self.max_colluders, int) and self.max_colluders >= 0):
            raise ValueError(f"max_colluders must be an int >= 0 or None, got {self.max_colluders!r}")
        if not isinstance(self.require_check, bool):
            raise ValueError(f"require_check must be True or False, got {self.require_check!r}")


@dataclass(frozen=True)
class SecAggConfig:
    """One round's parameters.

    max_clients: if set, sessions with more clients are refused and the bit width is checked
        against it up front (the session always re-checks against its real client count).
    neighbors: k, each client's number of neighbours; None -> default_neighbors(n).
        Must be even and < n - 1, or exactly n - 1 (classic SecAgg, everyone pairs with everyone).
    threshold: t, shares needed to rebuild a client's secret; None -> floor((k + c) / 2) + 1;
        k/2 < t <= k and t > c.
    max_colluders: c, clients that may collude with a malicious server; None -> default_colluders.
    bit_width: b, the ring is Z_{2^b}; the masked vector travels as b bits per value.
    clip, scale: values are clipped to [-clip, clip] and encoded with `scale` steps per unit.
    stochastic_rounding: unbiased random rounding instead of round-to-nearest.
    consistency_check: clients sign the survivor and drop-out lists (Ed25519) before revealing.
    """

    max_clients: int | None = None
    neighbors: int | None = None
    threshold: int | None = None
    bit_width: int = 32
    clip: float = 1.0
    scale: float = 2.0**16
    stochastic_rounding: bool = False
    consistency_check: bool = True
    max_colluders: int | None = None

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
        if self.max_colluders is not None and not (isinstance(self.max_colluders, int) and self.max_colluders >= 0):
            raise ValueError(f"max_colluders must be an int >= 0 or None, got {self.max_colluders!r}")
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
        k, t, _, _ = self.session(num_clients, dim)
        return k, t

    def session(self, num_clients: int, dim: int) -> tuple[int, int, int, int]:
        """(k, t, c, m) for a session; the checks of `resolve`, and t > c."""
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
        c = default_colluders(num_clients, k) if self.max_colluders is None else self.max_colluders
        t = default_threshold(k, c) if self.threshold is None else self.threshold
        self._check_threshold(k, t)
        if c >= t:
            raise ValueError(f"max_colluders={c} must be below the threshold t={t} (k={k}): raise k or t, "
                             f"or lower max_colluders")
        self.fixed_point.check_capacity(num_clients)
        return k, t, c, min_partners(k, t, c)

    def digest(self, session_id: bytes, client_ids: tuple[int, ...], dim: int) -> bytes:
        """SHA-256 over everything both sides must agree on for a session."""
        k, t, c, m = self.session(len(client_ids), dim)
        text = (f"k={k};t={t};c={c};m={m};b={self.bit_width};clip={float(self.clip)!r};scale={float(self.scale)!r};"
                f"sr={self.stochastic_rounding};cc={self.consistency_check};dim={dim};"
                f"ids={','.join(map(str, client_ids))}")
        return hashlib.sha256(session_id + b"\x00" + text.encode()).digest()
