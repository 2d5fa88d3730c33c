"""Secure aggregation (Bonawitz et al., CCS 2017) over the sparse graph of SecAgg+ (Bell et al.,
CCS 2020), as a pure library: no flwr, no torch, no I/O. Unlike both, mask keys are never
secret-shared: a survivor reveals its pairwise seed with a drop-out itself, which gives a bound
against a malicious server with c colluders that is local to one neighbourhood (m + t >= k + c + 1).

Client and server are state machines that exchange the frozen messages of `messages`;
`run_in_memory` drives a whole round in one process. The server learns the sum of the
surviving clients' vectors and their count. See docs/secagg.md for the protocol, the threat
model and the proof of the bound.
"""

from fedkd.secagg.client import SecAggClient
from fedkd.secagg.config import (
    Pins, SecAggConfig, default_colluders, default_neighbors, default_threshold, min_partners,
)
from fedkd.secagg.inmemory import run_in_memory
from fedkd.secagg.messages import MESSAGE_TYPES, STAGE_MESSAGES, wire_size
from fedkd.secagg.quantize import FixedPoint
from fedkd.secagg.server import SecAggResult, SecAggServer
from fedkd.secagg.stages import (
    ADVERTISE_KEYS, CONSISTENCY_CHECK, MASKED_INPUT, SHARE_KEYS, STAGES, UNMASK, ProtocolError, RoundFailed,
)

__all__ = [
    "ADVERTISE_KEYS", "CONSISTENCY_CHECK", "MASKED_INPUT", "SHARE_KEYS", "STAGES", "UNMASK",
    "MESSAGE_TYPES", "STAGE_MESSAGES", "FixedPoint", "ProtocolError", "RoundFailed",
    "Pins", "SecAggClient", "SecAggConfig", "SecAggResult", "SecAggServer",
    "default_colluders", "default_neighbors", "default_threshold", "min_partners", "run_in_memory", "wire_size",
]
