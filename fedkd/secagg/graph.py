"""The sparse neighbour graph of SecAgg+ (Bell et al., CCS 2020), derived from public data.

Owns: placing clients on a ring in a pseudo-random order fixed by the session id, and
joining each to its k nearest ring positions (a Harary graph, k even), or to everyone
(k = n - 1, classic SecAgg). Client and server call the same function on the same inputs,
so they agree without talking. Must not touch: keys, secrets, protocol state.

Order: clients sorted by SHA-256(b"fedkd/secagg/v1" 0x00 b"graph" 0x00 len(session) (2 bytes)
session, client id as 8 bytes big-endian), ties (impossible in practice) broken by id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fedkd.secagg.crypto import DOMAIN


def ring_order(session_id: bytes, client_ids: Sequence[int]) -> list[int]:
    prefix = DOMAIN + b"\x00graph\x00" + len(session_id).to_bytes(2, "big") + session_id

    def rank(cid: int) -> tuple[bytes, int]:
        return hashlib.sha256(prefix + cid.to_bytes(8, "big")).digest(), cid

    return sorted(client_ids, key=rank)


def neighbour_graph(session_id: bytes, client_ids: Sequence[int], k: int) -> dict[int, frozenset[int]]:
    """client id -> the k other clients it shares masks and secrets with (symmetric relation)."""
    n = len(client_ids)
    if k == n - 1:
        everyone = frozenset(client_ids)
        return {cid: everyone - {cid} for cid in client_ids}
    if k % 2 or not 2 <= k < n - 1:
        raise ValueError(f"neighbours k must be n-1={n - 1} or an even number in 2..{n - 2}, got {k}")
    ring = ring_order(session_id, client_ids)
    half = k // 2
    return {
        cid: frozenset(ring[(pos + step) % n] for step in range(-half, half + 1) if step)
        for pos, cid in enumerate(ring)
    }
