"""The three attacks of the second adversarial review, each run against the real state machines with
fedkd's defaults (where they fail) and with the defence switched off (the control, where they succeed):

1. the sum of a small clique H of honest clients, with the consistency check on (two lists, each with
   its own quorum of neighbour signatures), in memory and through the Flower handlers (the split-view
   script of `split_view.py`);
2. a pin downgrade through a run config with `secagg-neighbors=2`, through the Flower client handler;
3. one client that advertises a signing key equal to its cipher key and makes every honest neighbour
   refuse at share_keys, through the Flower client handler.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flwr.app import RecordDict
from secagg_testkit import seeded_random
from split_view import defence_off, recover_sum, small_clique, split_view
from test_attacks import DIM, FlowerHandler, _config, _vectors, attack_victim
from test_attacks_views import SESSION, _attack

from fedkd.aggregate import secagg_config
from fedkd.apps import codec
from fedkd.apps.node import ClientState
from fedkd.apps.secure import (
    STATE_KEY, VECTOR_KEY, client_step, keep_vector, keys_with_training, session_for, stage_step,
)
from fedkd.config import Config
from fedkd.secagg import ProtocolError, RoundFailed, SecAggClient, SecAggServer, default_colluders
from fedkd.secagg.messages import AdvertiseKeysRequest

# --- 1: the sum of a small clique, check on --------------------------------------------------------


def _clique_sum(n, old_rule):
    """The small-clique script (`small_clique`) against in-memory clients, with fedkd's default c = 2,
    t = (k + c) // 2 + 1 and the check on."""
    config = _config(2, check=True)
    clique, colluders, masked_with, views = small_clique(config, SESSION, n, DIM)
    vectors, out = _attack(config, n, colluders, masked_with, lambda _: views, old_rule)
    return config, clique, vectors, out


@pytest.mark.parametrize("n", [50, 100])
def test_the_sum_of_a_small_honest_clique_comes_out_only_without_the_sum_bound(n, monkeypatch):
    """With the defences (committee quorum, partners' attestations, list spread): nothing. The control,
    the old rule (t signatures among a client's own neighbours): the sum of the k/2 + 1 clients of H
    (7 at n = 50, 8 at n = 100), while no single vector of H comes out."""
    config, clique, vectors, out = _clique_sum(n, old_rule=False)
    assert recover_sum(config, clique, out) is None
    assert any("listed as survivors" in str(e) for e in out.refused.values())  # H refuses its small list
    assert any("masked with exactly its listed neighbours" in str(e) for e in out.refused.values())  # outsiders

    defence_off(monkeypatch)
    config, clique, vectors, out = _clique_sum(n, old_rule=True)
    total = recover_sum(config, clique, out)
    k = config.session(n, DIM)[0]
    assert len(clique) == k // 2 + 1 and total is not None
    plain = sum(vectors[x].astype(np.float64) for x in clique)
    assert np.abs(total - plain).max() <= len(clique) / config.scale
    assert recover_sum(config, clique[:1], out) is None


# --- 1, through the Flower handlers -------------------------------------------------------------------


class FlowerNodes:
    """Honest clients through `fedkd.apps.secure`, as `fedkd.apps.client_app` drives them: the
    advertise-keys request as it rides in a train message (`keys_with_training`, after `keep_vector`),
    every later stage as a `query.secagg` request (`stage_step`), each request and reply through
    `fedkd.apps.codec`. `per_node` clients share a node: each keeps its own `ClientState` slice of the
    node's `context.state` (a RecordDict); with per_node = 1 each client has a RecordDict of its own."""

    def __init__(self, config, vectors, run_id, per_node=1):
        self.config, self.run_id = config, run_id
        nodes = {}
        self.states = {}
        for c in sorted(vectors):
            if per_node == 1:
                self.states[c] = RecordDict()
            else:
                self.states[c] = ClientState(nodes.setdefault(c // per_node, RecordDict()), c)
            keep_vector(self.states[c], c, vectors[c])
        self.nodes = nodes

    def __call__(self, c, request, vector=None):  # the vector is already on the node
        content = codec.encode(request)
        if isinstance(request, AdvertiseKeysRequest):
            keys = keys_with_training(content, self.states[c], self.config, c, 10, 1, run_id=self.run_id)
            if keys is None:
                raise ProtocolError(f"client {c} sent no keys with training")
            return codec.decode(RecordDict({codec.RECORD: keys}))
        return codec.decode(stage_step(content, self.states[c], self.config, c, 10, 1, run_id=self.run_id))


def _clique_through_flower(n, per_node, old_rule):
    """The small-clique script with fedkd's default Config (`secagg_config`: c = 2, check on, b = 24),
    the honest clients through the Flower handlers, the colluders the server's own state machines."""
    run_id = 7
    config = Config(num_clients=n)
    sa = secagg_config(config, 10, 1)
    session = session_for(run_id, 1)
    vectors = _vectors(n)
    clique, colluders, masked_with, views = small_clique(sa, session, n, DIM)
    honest = FlowerNodes(config, vectors, run_id, per_node)
    evil = {j: SecAggClient(j, sa, session, seeded_random(j)) for j in colluders}
    out = split_view(sa, session, vectors, honest, evil, masked_with, lambda _: views, old_rule)
    return sa, clique, vectors, out, honest


# the default k is 12 at n = 33 as at n = 50 (H of 7 clients, lists of at least 18 and 27 survivors)
@pytest.mark.parametrize("n, per_node", [(33, 1), (50, 1), (50, 5)])
def test_through_the_flower_handlers_a_small_clique_sum_comes_out_only_without_the_sum_bound(n, per_node,
                                                                                             monkeypatch):
    """The same attack with every honest client driven through `keys_with_training` / `stage_step`
    (alone on its node, or five to a node in `ClientState` slices) and fedkd's default Config: neither
    H's sum nor any single honest vector comes out, and the handlers wipe what a refusing client held.
    The control, the sum bound's rules switched off as in the in-memory test: H's sum comes out."""
    sa, clique, vectors, out, honest = _clique_through_flower(n, per_node, old_rule=False)
    k = sa.session(n, DIM)[0]
    assert len(clique) == k // 2 + 1 and sa.consistency_check and sa.max_colluders is None  # the defaults
    assert recover_sum(sa, clique, out) is None
    assert all(recover_sum(sa, (x,), out) is None for x in vectors if x not in out.colluders)
    assert set(clique) <= set(out.refused)
    assert all("listed as survivors" in str(out.refused[x]) for x in clique)  # H refuses its small list
    assert any("masked with exactly its listed neighbours" in str(e) for e in out.refused.values())  # outsiders
    for x in out.refused:  # a refusal wipes the client's secrets and vector from its node's state
        assert not {STATE_KEY, VECTOR_KEY} & set(honest.states[x])

    defence_off(monkeypatch)
    sa, clique, vectors, out, _ = _clique_through_flower(n, per_node, old_rule=True)
    total = recover_sum(sa, clique, out)
    assert total is not None
    plain = sum(np.clip(vectors[x].astype(np.float64), -sa.clip, sa.clip) for x in clique)
    assert np.abs(total - plain).max() <= len(clique) / sa.scale
    assert recover_sum(sa, clique[:1], out) is None  # one vector alone keeps a mask


# --- 2: pin downgrade through the run config --------------------------------------------------------


def _old_check_pins(self, num_clients, k, colluders):
    """The pin before the fix, for the control: the default c was computed from the server's k."""
    want = default_colluders(num_clients, k) if self.pins.max_colluders is None else self.pins.max_colluders
    if colluders < want:
        raise ProtocolError(f"session tolerates {colluders} colluders; this node requires {want}")


def test_a_run_config_with_two_neighbours_cannot_lower_a_default_pinned_node(monkeypatch):
    """`secagg-neighbors = 2` gives c = 0 (t = 2, m = 1): the victim's two partners, both colluders, hold
    every secret of it. A node with default pins computes its pin from n alone (c = 2 at n = 10) and
    refuses k = 2; with the pin computed from the server's k (the control) the vector comes out."""
    run_id = 5
    session = session_for(run_id, 1)
    vectors = _vectors(10)
    weak = Config(num_clients=10, secagg_neighbors=2)
    with pytest.raises(ProtocolError, match="takes k >= 4"):
        attack_victim(secagg_config(weak, 10), session, vectors, FlowerHandler(weak, vectors, run_id), 2)
    monkeypatch.setattr(SecAggClient, "_check_pins", _old_check_pins)
    out = attack_victim(secagg_config(weak, 10), session, vectors, FlowerHandler(weak, vectors, run_id), 2)
    assert out["recovered"]


def test_a_pinned_node_refuses_k_below_what_its_c_needs_and_accepts_enough():
    """The pin is the node's own figure (2 at n = 10 by default, or --node-config's): k = 2 cannot carry
    c = 2 (t > c and t <= k leave no room), k = 4 can, and a node pinned to c = 0 takes k = 2."""
    vectors = _vectors(10)
    session = session_for(5, 1)

    def start(config, node_config=None):
        handler = FlowerHandler(config, vectors, 5, node_config)
        server = SecAggServer(secagg_config(config, 10), session, list(range(10)), DIM)
        return handler(0, server.start()[0])

    with pytest.raises(ProtocolError, match="takes k >= 4"):
        start(Config(num_clients=10, secagg_neighbors=2), {"secagg-max-colluders": 2})
    assert start(Config(num_clients=10, secagg_neighbors=4)).mask_public_key
    assert start(Config(num_clients=10, secagg_neighbors=2), {"secagg-max-colluders": 0}).mask_public_key


# --- 3: one client's reused key -----------------------------------------------------------------------


def _old_check_keys_unique(self, reply):
    """The server check before the fix, for the control: cipher and mask keys only."""
    mine = {reply.cipher_public_key, reply.mask_public_key}
    if len(mine) != 2 or any(mine & {k.cipher_public_key, k.mask_public_key} for k in self._replies.values()):
        raise ProtocolError(f"client {reply.sender} advertised a public key that is not its own")


def _flower_round(n, bad, tamper):
    """A round with an honest SecAggServer and honest clients through `client_step`, except that client
    `bad`'s advertise-keys reply goes through `tamper(reply, server)`. Returns (result or RoundFailed, refused by the
    server, refusals by clients, vectors)."""
    config = Config(num_clients=n)
    run_id = 3
    vectors = _vectors(n)
    states = {c: RecordDict() for c in vectors}
    for c, v in vectors.items():
        keep_vector(states[c], c, v)
    server = SecAggServer(secagg_config(config, 10), session_for(run_id, 1), sorted(vectors), DIM)
    server_refused, client_refused = [], {}
    requests = server.start()
    try:
        while True:
            stage = server.stage
            for c, request in requests.items():
                try:
                    reply = codec.decode(client_step(codec.encode(request), states[c], config, c, 10, 1, run_id=run_id))
                except ProtocolError as err:
                    client_refused[c] = err
                    continue
                if stage == "advertise_keys" and c == bad:
                    reply = tamper(reply, server)
                try:
                    server.receive(reply)
                except ProtocolError:
                    server_refused.append(c)
            if stage == "unmask":
                return server.finish(), server_refused, client_refused, vectors
            requests = server.advance()
    except RoundFailed as err:
        return err, server_refused, client_refused, vectors


@pytest.mark.parametrize("n", [12, 20, 50])
@pytest.mark.parametrize("which", ["cipher_public_key", "mask_public_key"])
def test_a_client_whose_signing_key_copies_another_of_its_keys_drops_out_alone(n, which, monkeypatch):
    """The server refuses the reply, so the client is a drop-out at advertise_keys and the round is exact
    over everyone else. The control (the old server check): the server relays the keys, every honest
    neighbour refuses them at share_keys and the round fails there."""
    bad = 3

    def tamper(reply, server):
        return dataclasses.replace(reply, signing_public_key=getattr(reply, which))

    result, server_refused, client_refused, vectors = _flower_round(n, bad, tamper)
    assert server_refused == [bad] and not client_refused
    assert not isinstance(result, Exception) and bad not in result.survivors and result.count == n - 1
    plain = sum(np.clip(vectors[c].astype(np.float64), -1, 1) for c in result.survivors)
    assert np.abs(result.sum - plain).max() <= result.count / (2 * secagg_config(Config(num_clients=n), 10).scale)

    monkeypatch.setattr(SecAggServer, "_check_keys_unique", _old_check_keys_unique)
    result, server_refused, client_refused, _ = _flower_round(n, bad, tamper)
    assert not server_refused and client_refused
    assert all("two advertised public keys are identical" in str(e) for e in client_refused.values())
    assert isinstance(result, RoundFailed) and result.stage == "share_keys"


def test_the_server_refuses_a_key_equal_to_another_clients_signing_key():
    """Reuse across clients, any of the three keys: client 2's cipher key is client 1's signing key."""
    def tamper(reply, server):  # the server has taken client 1's keys already (ids in order)
        return dataclasses.replace(reply, cipher_public_key=server._replies[1].signing_public_key)

    result, server_refused, client_refused, _ = _flower_round(12, 2, tamper)
    assert server_refused == [2] and not client_refused and result.count == 11
