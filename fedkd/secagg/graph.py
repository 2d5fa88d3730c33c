"""The sparse neighbour graph of SecAgg+ (Bell et al., CCS 2020), derived from public data.

Owns: placing clients on a ring in a pseudo-random order fixed by the session id, and
joining each to its k nearest ring positions (a Harary graph, k even), or to everyone
(k = n - 1, classic SecAgg). Client and server call the same function on the same inputs,
so they agree without talking. Must not touch: keys, secrets, protocol state.

Ring order: key = SHA-256(b"fedkd/secagg/v1" 0x00 b"graph" 0x00 len(session) (2 bytes) session);
the sorted client ids get one 64-bit little-endian word each from AES-256-CTR(key) (crypto.keystream),
and the ring lists them by increasing word, ties (negligible) by id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from fedkd.secagg.crypto import DOMAIN, keystream


def ring_order(session_id: bytes, client_ids: Sequence[int]) -> list[int]:
    """The pseudo-random ring position of every client, fixed by the session id."""
    ids = sorted(client_ids)
    key = hashlib.sha256(DOMAIN + b"\x00graph\x00" + len(session_id).to_bytes(2, "big") + session_id).digest()
    words = np.frombuffer(keystream(key, 8 * len(ids)), dtype="<u8")  # (n,) one word per sorted id
    return [ids[i] for i in np.argsort(words, kind="stable")]


def neighbour_graph(session_id: bytes, client_ids: Sequence[int], k: int) -> dict[int, frozenset[int]]:
    """client id -> the k other clients it shares masks and secrets with (symmetric relation)."""
    return neighbour_rows(session_id, client_ids, k, client_ids)


def neighbours_of(session_id: bytes, client_ids: Sequence[int], k: int, client_id: int) -> frozenset[int]:
    """One client's row of `neighbour_graph`, without building the others."""
    n = len(client_ids)
    _check_k(n, k)
    if k == n - 1:
        return frozenset(client_ids) - {client_id}
    ring = ring_order(session_id, client_ids)
    return _ring_neighbours(ring, ring.index(client_id), k)


def neighbour_rows(session_id: bytes, client_ids: Sequence[int], k: int, which: Sequence[int]) -> dict[int, frozenset[int]]:
    """The rows of `neighbour_graph` for the clients in `which` only (one ring, O(n + |which| k))."""
    n = len(client_ids)
    _check_k(n, k)
    if k == n - 1:
        everyone = frozenset(client_ids)
        return {cid: everyone - {cid} for cid in which}
    ring = ring_order(session_id, client_ids)
    pos = {cid: i for i, cid in enumerate(ring)}
    return {cid: _ring_neighbours(ring, pos[cid], k) for cid in which}


def thinnest_window(session_id: bytes, client_ids: Sequence[int], k: int, members: Sequence[int]) -> int:
    """The fewest `members` in any k/2 consecutive ring positions (len(members) for the complete graph).

    If every such window holds an honest member, consecutive honest members on the ring are at most
    k/2 apart, hence neighbours: the honest members are connected in the graph (docs/secagg.md)."""
    n = len(client_ids)
    _check_k(n, k)
    if k == n - 1:
        return len(members)
    inside = set(members)
    marks = np.fromiter((cid in inside for cid in ring_order(session_id, client_ids)), dtype=np.int64, count=n)
    half = k // 2
    sums = np.cumsum(np.concatenate([marks, marks[: half - 1]]))  # wrap around the ring
    windows = sums[half - 1 :] - np.concatenate([[0], sums[: n - 1]])  # (n,) window starting at each position
    return int(windows.min())


def _ring_neighbours(ring: list[int], pos: int, k: int) -> frozenset[int]:
    n, half = len(ring), k // 2
    return frozenset(ring[(pos + step) % n] for step in range(-half, half + 1) if step)


def _check_k(n: int, k: int) -> None:
    if not (k == n - 1 or (k % 2 == 0 and 2 <= k < n - 1)):
        raise ValueError(f"neighbours k must be n-1={n - 1} or an even number in 2..{n - 2}, got {k}")
