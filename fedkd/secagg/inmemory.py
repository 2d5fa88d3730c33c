"""Run one secure-aggregation round with every client and the server in this process.

Owns: the loop that carries requests to clients and replies to the server, and simulated
drop-outs. Used by tests, the benchmark and plain-versus-secure comparisons; a Flower
workflow does the same with messages on the wire. Must not touch: I/O.

Memory: `vectors` may be a lazy Mapping (a vector made on access); each is read once, at
the masked-input stage, and each masked input is folded into the server's sum before the
next client runs, so at most one client vector is alive at a time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from fedkd.secagg.client import SecAggClient
from fedkd.secagg.config import Pins, SecAggConfig
from fedkd.secagg.crypto import RandomBytes
from fedkd.secagg.messages import wire_size
from fedkd.secagg.server import SecAggResult, SecAggServer
from fedkd.secagg.stages import MASKED_INPUT, UNMASK, stages_for

# observer(stage, client_id, seconds, reply_bytes), called after each client step
Observer = Callable[[str, int, float, int], None]


def run_in_memory(
    vectors: Mapping[int, np.ndarray],
    config: SecAggConfig,
    session_id: bytes = b"fedkd/in-memory",
    drop: Mapping[str, set[int]] | None = None,
    random_bytes: RandomBytes = os.urandom,
    dim: int | None = None,
    observer: Observer | None = None,
    clock: Callable[[], float] = time.perf_counter,
    pins: Pins | None = None,
) -> SecAggResult:
    """Sum `vectors` (client id -> (dim,) float vector) under secure aggregation.

    drop: stage name -> clients that go silent at that stage (they never reply again).
    dim: vector length; read from the first vector when None.
    Raises RoundFailed when the drop-outs are more than the round can survive.
    """
    drop = {stage: set(ids) for stage, ids in (drop or {}).items()}
    valid = stages_for(config.consistency_check)
    for stage in drop:
        if stage not in valid:
            raise ValueError(f"drop stage {stage!r} is not one of {valid}")
    ids = sorted(vectors)
    if dim is None:
        dim = int(np.asarray(vectors[ids[0]]).shape[0])
    server = SecAggServer(config, session_id, ids, dim, clock=clock)
    clients = {cid: SecAggClient(cid, config, session_id, random_bytes, pins=pins) for cid in ids}

    def replies(requests: dict[int, object], stage: str) -> Iterator[object]:
        for cid, request in requests.items():
            if cid in drop.get(stage, ()):
                clients.pop(cid, None)
                continue
            vector = vectors[cid] if stage == MASKED_INPUT else None
            began = clock()
            reply = clients[cid].handle(request, vector)
            if observer is not None:
                observer(stage, cid, clock() - began, wire_size(reply))
            yield reply

    requests = server.start()
    while server.stage != UNMASK:
        requests = server.step(replies(requests, server.stage))
    return server.finish(replies(requests, UNMASK))
