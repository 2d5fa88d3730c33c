"""The server refuses advertised keys that would let one client sink its neighbours."""

import pytest

from fedkd.secagg import ProtocolError, SecAggClient, SecAggConfig, SecAggServer
from fedkd.secagg.messages import AdvertiseKeysReply


def _start(n=4):
    cfg = SecAggConfig()
    server = SecAggServer(cfg, b"s", list(range(n)), 3)
    requests = server.start()
    clients = {i: SecAggClient(i, cfg, b"s") for i in range(n)}
    return server, {i: clients[i].handle(requests[i]) for i in range(n)}


def test_low_order_key_is_refused_and_round_goes_on():
    server, replies = _start()
    bad = AdvertiseKeysReply(b"s", 3, bytes(32), replies[3].mask_public_key,  # the all-zero point
                             replies[3].signing_public_key, b"")
    for i in range(3):
        server.receive(replies[i])
    with pytest.raises(ProtocolError, match="unusable X25519"):
        server.receive(bad)
    server.receive(replies[3])  # the honest reply is still taken
    assert set(server.advance()) == {0, 1, 2, 3}


def test_copied_key_is_refused():
    server, replies = _start()
    server.receive(replies[0])
    thief = AdvertiseKeysReply(b"s", 1, replies[0].cipher_public_key, replies[1].mask_public_key,
                               replies[1].signing_public_key, b"")
    with pytest.raises(ProtocolError, match="not its own"):
        server.receive(thief)
    same = AdvertiseKeysReply(b"s", 2, replies[2].mask_public_key, replies[2].mask_public_key,
                              replies[2].signing_public_key, b"")
    with pytest.raises(ProtocolError, match="not its own"):
        server.receive(same)
