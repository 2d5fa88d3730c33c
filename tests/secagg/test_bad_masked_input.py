"""A masked input that fails the server's checks, through the Flower glue (`SecureRound`, whose
`take_replies` feeds each reply to the server): it is that client's drop-out, named, and the round
goes on exact over everyone else. The control of each case is the same client's honest reply, which
the same round takes (the client survives).

What the server can check on one masked input is its form: its length, and that it encodes values of
the ring (with b not a multiple of 8, the bits past the last b-bit value must be zero; before, they
were ignored and the reply taken). Whether the unmasked value is in range it cannot see, because a
masked input is uniform over the ring: the range check on the *total* catches an input pushed far
enough and fails the round without a name (the last test; docs/secagg.md, "Malicious clients").
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict
from secagg_testkit import drive, seeded_random
from test_attacks import DIM, _vectors

from fedkd.aggregate import SecureAggregationError
from fedkd.apps import codec, secure
from fedkd.apps.inprocess import _task_identity
from fedkd.apps.node import CLIENTS, ClientState, entry_key
from fedkd.apps.secure import SecureRound, keep_vector, keys_with_training, stage_step
from fedkd.config import Config
from fedkd.secagg import ProtocolError, SecAggClient, SecAggServer
from fedkd.secagg.quantize import pack, packed_size, ring_dtype, ring_mask, unpack

BAD, RUN = 4, 7


class NodesGrid:
    """A Grid whose nodes answer `query.secagg` through `stage_step`, each client in its own
    `ClientState` slice of its node's state; client BAD's masked input goes through `spoil`."""

    def __init__(self, config, states, spoil):
        self.config, self.states, self.spoil = config, states, spoil

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            content = RecordDict()
            for cid in msg.content[CLIENTS]["ids"]:
                key = entry_key(codec.RECORD, cid)
                answer = stage_step(RecordDict({codec.RECORD: msg.content[key]}), self.states[cid], self.config,
                                    cid, 10, 1, run_id=RUN)[codec.RECORD]
                if cid == BAD and answer["type"] == "MaskedInputReply":
                    answer = self.spoil(answer)
                content[key] = answer
            replies.append(SimpleNamespace(content=content, has_error=lambda: False,
                                           metadata=SimpleNamespace(src_node_id=msg.metadata.dst_node_id)))
        return replies


def _round(spoil, monkeypatch, n=12, bit_width=0):
    """A secure round of n clients, three to a node, with fedkd's default Config (or bit width
    `bit_width`), run through `SecureRound`; returns (the Aggregate or the error, vectors, the
    server's log lines)."""
    config = Config(num_clients=n, secagg_bit_width=bit_width)
    vectors = _vectors(n)
    nodes = {c: 100 + c // 3 for c in range(n)}
    node_states = {node: RecordDict() for node in set(nodes.values())}
    states = {c: ClientState(node_states[nodes[c]], c) for c in range(n)}
    logged = []
    monkeypatch.setattr(secure, "log", lambda level, text, *args: logged.append(text % args))
    round_ = SecureRound(RUN, nodes, DIM, config, 10, 1)
    keys = {}
    for c in range(n):
        keep_vector(states[c], c, vectors[c])
        keys[c] = keys_with_training(RecordDict({codec.RECORD: round_.request(c)}), states[c], config, c, 10, 1,
                                     run_id=RUN)
    try:
        with _task_identity(RUN):  # Flower 1.42 builds the stage messages for the running ServerApp
            return round_.finish(NodesGrid(config, states, spoil), keys), vectors, logged
    except SecureAggregationError as err:
        return err, vectors, logged


def _masked(record, change):
    """The record with its `masked` bytes replaced by change(bytes)."""
    reply = codec.decode(RecordDict({codec.RECORD: record}))
    return codec.encode(dataclasses.replace(reply, masked=change(reply.masked)))[codec.RECORD]


def _high_pad_bits(masked: bytes) -> bytes:
    return masked[:-1] + bytes([masked[-1] | 0xF0])  # b = 20, 17 values: the last byte's top 4 bits are padding


def _as_ints(record):
    """`masked` as a list of ints (2^40, far outside the ring) instead of packed bytes."""
    return ConfigRecord({**dict(record), "masked": [2**40] * (DIM + 1)})


SPOILS = {  # name -> (bit width, spoil, what the log says)
    "one byte short": (0, lambda r: _masked(r, lambda m: m[:-1]), "must be"),
    "one byte long": (0, lambda r: _masked(r, lambda m: m + b"\0"), "must be"),
    "bits past the last value": (20, lambda r: _masked(r, _high_pad_bits), "outside the ring"),
    "ints outside the ring": (0, _as_ints, "MaskedInputReply.masked: expected bytes"),
}


@pytest.mark.parametrize("case", sorted(SPOILS))
def test_a_masked_input_of_the_wrong_form_is_that_clients_drop_out_and_named(case, monkeypatch):
    bit_width, spoil, why = SPOILS[case]
    result, vectors, logged = _round(spoil, monkeypatch, bit_width=bit_width)
    assert not isinstance(result, Exception), result
    assert result.details["refused"] == {"masked_input": [BAD]}
    assert BAD not in result.contributors and result.count == 11
    assert result.details["dropped"] == {"masked_input": [BAD]}  # its neighbours revealed their seeds with it
    plain = sum(np.clip(vectors[c].astype(np.float64), -1, 1) for c in result.contributors)
    assert np.abs(result.total - plain).max() <= result.details["error_bound"] + 1e-12
    assert len(logged) == 1 and f"refused client {BAD}'s" in logged[0] and why in logged[0]  # the server's log
    # the control: the same round with client BAD's own reply takes it
    result, _, logged = _round(lambda record: record, monkeypatch, bit_width=bit_width)
    assert BAD in result.contributors and result.count == 12 and not result.details["refused"] and not logged


def test_the_servers_error_names_the_client_and_leaves_it_free_to_answer():
    """The library's own message, which take_replies logs, names the sender; the refused reply
    leaves the server as it was, so the client's well-formed reply is still taken (the control)."""
    config = secure.secagg_config(Config(num_clients=4, secagg_bit_width=20), 10)
    vectors = _vectors(4)
    server = SecAggServer(config, b"s", sorted(vectors), DIM)
    clients = {c: SecAggClient(c, config, b"s", seeded_random(c)) for c in vectors}
    requests = drive(server, clients, server.start(), vectors, "masked_input")
    reply = clients[2].handle(requests[2], vectors[2])
    want = packed_size(DIM + config.fixed_point.count_slots(DIM), 20)
    with pytest.raises(ProtocolError, match=f"masked input from client 2 must be {want} bytes"):
        server.receive(dataclasses.replace(reply, masked=reply.masked[:-1]))
    with pytest.raises(ProtocolError, match="masked input from client 2 sets bits past its last 20-bit value"):
        server.receive(dataclasses.replace(reply, masked=_high_pad_bits(reply.masked)))
    server.receive(reply)


def test_an_input_out_of_range_inside_the_ring_fails_the_round_without_a_name(monkeypatch):
    """A masked input of the right form whose value is pushed past count x max_code: nothing in one
    masked input shows it, so the range check on the total fails the round at unmask, naming no
    client (input validity proofs are out of scope). The control, the honest reply, is the round above."""
    def shift(record):
        def push(masked):
            config = secure.secagg_config(Config(num_clients=12), 10)
            length = DIM + config.fixed_point.count_slots(DIM)
            y = unpack(masked, length, config.bit_width).astype(np.int64)
            y[0] += 13 * config.fixed_point.max_code
            return pack((y & ring_mask(config.bit_width)).astype(ring_dtype(config.bit_width)), config.bit_width)
        return _masked(record, push)

    result, _, logged = _round(shift, monkeypatch)
    assert isinstance(result, SecureAggregationError) and "stage 'unmask'" in str(result)
    assert "out of range" in str(result) and not logged
