"""Helpers shared by the secagg tests (not a test module)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable


def seeded_random(seed: bytes | int) -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom: SHAKE-256(seed || counter)."""
    if isinstance(seed, int):
        seed = seed.to_bytes(8, "big")
    counter = itertools.count()

    def random_bytes(n: int) -> bytes:
        return hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)

    return random_bytes


def drive(server, clients, requests, vectors, until):
    """Carry requests to clients and replies to the server until the server awaits `until`
    replies; returns that stage's requests. Vectors go with the masked-input requests."""
    while server.stage != until:
        stage = server.stage
        requests = server.step(
            clients[c].handle(r, vectors[c] if stage == "masked_input" else None) for c, r in requests.items()
        )
    return requests


class Recorder:
    """Wraps a random_bytes function and keeps every draw, in order."""

    def __init__(self, inner: Callable[[int], bytes]) -> None:
        self.inner = inner
        self.draws: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        data = self.inner(n)
        self.draws.append(data)
        return data
