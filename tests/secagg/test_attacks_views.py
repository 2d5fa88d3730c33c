"""Attacks past the one-client bound, from the review of issue 13 (F1, F2, F5), run against the real
state machines: what the server can learn about *sums* of honest clients with the consistency check
off, what the check does and does not stop when different groups are shown different full lists,
the bound at the strongest placement of the colluders, and what the range check cannot catch.

The adversary is the split-view script of `split_view.py`: an honest server for the first two stages,
then it picks which envelopes reach whom, hands each honest client a (survivors, dropped) view,
collects every signature on each client's exact view (honest signers of that view and all colluders),
and reads the colluders' secrets.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from secagg_testkit import seeded_random
from split_view import defence_off, recover_sum, split_view
from test_attacks import DIM, _config, _exact, _round, _vectors

from fedkd.secagg import ProtocolError, RoundFailed, SecAggClient, SecAggServer
from fedkd.secagg.graph import ring_order
from fedkd.secagg.quantize import pack, ring_dtype, ring_mask, unpack

SESSION = b"fedkd/run-7/round-3"


def _attack(config, n, colluders, masked_with, views, old_rule=False):
    """The split-view script (`split_view`) against in-memory clients, the colluders among them;
    `views(partners)`: honest client -> the (survivors, dropped) pair it is shown. Returns (vectors,
    the adversary's `Outcome`)."""
    vectors = _vectors(n)
    clients = {c: SecAggClient(c, config, SESSION, seeded_random(c)) for c in sorted(vectors)}

    def honest(c, request, vector=None):
        return clients[c].handle(request, vector)

    out = split_view(config, SESSION, vectors, honest, {j: clients[j] for j in colluders}, masked_with, views,
                     old_rule)
    return vectors, out


# --- F1: with the check off, the sum of two honest neighbours -----------------------------------


def _pair_sum(check):
    """n = 100 (k = 14, t = 9, c = 2, m = 8). v and u each get only m envelopes: each other, the two
    colluders (common neighbours of both: the placement the bound must survive) and m - c - 1 others,
    who are told that v (or u) dropped and reveal their pairwise seeds; everyone else is told that
    nobody dropped and hands over seed shares. The mask between v and u cancels in y_v + y_u."""
    n = 100
    config = _config(2, check=check)
    k, t, c, m = config.session(n, DIM)
    graph = SecAggServer(config, SESSION, list(range(n)), DIM).graph
    v = 0
    u = next(u for u in sorted(graph[v]) if len((graph[v] & graph[u]) - {u, v}) >= c)
    colluders = set(sorted((graph[v] & graph[u]) - {u, v})[:c])
    told = {v: sorted(graph[v] - colluders - {u})[: m - c - 1], u: sorted(graph[u] - colluders - {v})[: m - c - 1]}
    masked_with = {v: colluders | {u} | set(told[v]), u: colluders | {v} | set(told[u])}
    honest = (graph[v] | graph[u] | {v, u}) - colluders

    def views(partners):  # each honest client: its own partners, minus v or u where it was told so
        out = {}
        for h in sorted(honest):
            dropped = tuple(x for x in (v, u) if h in told[x])
            out[h] = (tuple(sorted((partners[h] | {h}) - set(dropped))), dropped)
        return out

    vectors, out = _attack(config, n, colluders, masked_with, views)
    return config, (v, u), vectors, out


def test_with_the_check_off_the_server_learns_the_sum_of_two_honest_neighbours():
    config, (v, u), vectors, out = _pair_sum(check=False)
    assert not out.refused
    pair = recover_sum(config, (v, u), out)
    assert pair is not None
    assert np.abs(pair - (vectors[v].astype(np.float64) + vectors[u])).max() <= 2 / config.scale
    # each vector alone still keeps the mask it shares with the other: the one-client bound holds
    assert recover_sum(config, (v,), out) is None
    assert recover_sum(config, (u,), out) is None


def test_with_the_check_on_the_same_pair_sum_script_is_refused():
    config, (v, u), vectors, out = _pair_sum(check=True)
    assert out.refused and all(isinstance(e, ProtocolError) for e in out.refused.values())
    assert recover_sum(config, (v, u), out) is None


# --- F2: two full lists, one per side of the ring, with the check on ----------------------------


def _split_view(tolerated, old_rule=False):
    """Check on, n = 100, 2 colluders at the victim's two ring neighbours. The victim gets m envelopes:
    the colluders and its left side. The left half of the ring is shown L1 ("v dropped": v's partners
    there reveal their pairwise seeds with v), the right half L2 ("nobody dropped": v's other neighbours
    hand over shares of v's seed). Each half is a full, global list and gathers its own quorum of
    neighbour signatures."""
    n = 100
    config = _config(tolerated, check=True)
    k, t, c, m = config.session(n, DIM)
    ids = list(range(n))
    ring = ring_order(SESSION, ids)
    pos = {x: i for i, x in enumerate(ring)}
    v = 0
    off = {x: (pos[x] - pos[v] + n // 2) % n - n // 2 for x in ids}  # ring offset from v in [-n/2, n/2)
    at = {o: x for x, o in off.items()}
    colluders = {at[-1], at[+1]}
    masked_with = {v: colluders | {at[o] for o in range(-(m - 1), -1)}}
    l1 = (tuple(x for x in ids if x != v), (v,))
    l2 = (tuple(ids), ())
    views = {x: (l1 if off[x] < 0 else l2) for x in ids if x != v and x not in colluders}
    vectors, out = _attack(config, n, colluders, masked_with, lambda _: views, old_rule)
    return config, v, vectors, out


def test_two_full_lists_past_the_bound_recover_a_vector_only_without_the_committee_quorum(monkeypatch):
    """Against c = 1 parameters, 2 colluders and two global lists, each with its own quorum of neighbour
    signatures, recovered v's vector with the check on (the control, the old rule). With the committee
    quorum at most one of the two lists can gather a quorum, and nothing comes out."""
    config, v, vectors, out = _split_view(tolerated=1)
    assert recover_sum(config, (v,), out) is None
    assert any("committee signatures" in str(e) for e in out.refused.values())
    defence_off(monkeypatch)
    config, v, vectors, out = _split_view(tolerated=1, old_rule=True)
    guess = recover_sum(config, (v,), out)
    assert guess is not None and np.abs(guess - vectors[v]).max() <= 1 / config.scale


def test_two_full_lists_within_the_bound_recover_nothing():
    config, v, vectors, out = _split_view(tolerated=2)
    assert recover_sum(config, (v,), out) is None


# --- the bound at the strongest placement -------------------------------------------------------


@pytest.mark.parametrize("placement", ["ring neighbours", "one side", "far ends", "common to v and u"])
def test_the_one_client_bound_holds_wherever_the_colluders_sit(placement):
    """Against c = 2 with check off (the bound alone), the victim gets m envelopes, colluders among
    them, partners are told it dropped and the other neighbours that it survived, for several
    placements of the 2 colluders in N(v): never t shares together with every pairwise seed.
    The same script against c = 1 with 2 colluders recovers the vector (so the test can fail)."""
    n = 100
    for tolerated, expect in ((2, False), (1, True)):
        config = _config(tolerated, check=False)
        k, t, c, m = config.session(n, DIM)
        ids = list(range(n))
        ring = ring_order(SESSION, ids)
        pos = {x: i for i, x in enumerate(ring)}
        graph = SecAggServer(config, SESSION, ids, DIM).graph
        v = 0
        at = {(pos[x] - pos[v] + n // 2) % n - n // 2: x for x in ids}
        if placement == "ring neighbours":
            colluders = {at[-1], at[1]}
        elif placement == "one side":
            colluders = {at[1], at[2]}
        elif placement == "far ends":
            colluders = {at[-(k // 2)], at[k // 2]}
        else:
            u = next(u for u in sorted(graph[v]) if len((graph[v] & graph[u]) - {u, v}) >= 2)
            colluders = set(sorted((graph[v] & graph[u]) - {u, v})[:2])
        partners = colluders | set(sorted(graph[v] - colluders)[: m - 2])
        views = {}
        for h in sorted(graph[v] - colluders):
            dropped = (v,) if h in partners else ()
            views[h] = (tuple(sorted((graph[h] | {h}) - set(dropped))), dropped)
        vectors, out = _attack(config, n, colluders, {v: partners}, lambda _: views)
        guess = recover_sum(config, (v,), out)
        assert bool(guess is not None and np.abs(guess - vectors[v]).max() <= 1 / config.scale) is expect


# --- F5: what the range check catches and what it cannot ----------------------------------------


def _shift(delta_first_word, delta_count):
    """A tamper for `_round`: client 3 adds ring values to its own masked input (first code word and
    the lowest clipped-count digit), i.e. sends another input than any vector it could encode."""
    def tamper(stage, cid, reply, clients):
        if stage != "masked_input" or cid != 3:
            return reply
        config = clients[3].config
        length = DIM + config.fixed_point.count_slots(DIM)
        y = unpack(reply.masked, length, config.bit_width).astype(np.int64)
        y[0] += delta_first_word
        y[DIM] += delta_count
        y &= ring_mask(config.bit_width)
        return dataclasses.replace(reply, masked=pack(y.astype(ring_dtype(config.bit_width)), config.bit_width))
    return tamper


def test_the_range_check_cannot_see_an_out_of_range_input_whose_sum_stays_in_range():
    """One client moves coordinate 0 by -4 max_code (an input of about -8 clip where -clip is the
    least it could encode) and the clipped count by 37: the total stays in range, so the round
    completes with the sum moved and the clipped count forged."""
    config = _config(2, check=True)
    max_code = config.fixed_point.max_code
    result, vectors, _ = _round(20, config, _shift(-4 * max_code, 37))
    assert not isinstance(result, Exception)
    plain = sum(np.clip(vectors[c].astype(np.float64), -1, 1) for c in result.survivors)
    assert result.sum[0] - plain[0] == pytest.approx(-4 * max_code / config.scale, abs=result.count / (2 * config.scale))
    assert result.clipped == 37
    honest, _, _ = _round(20, config, _shift(0, 0))  # the control: no shift, exact sum, nothing clipped
    assert _exact(honest, vectors, config) and honest.clipped == 0


def test_the_range_check_catches_a_total_pushed_out_of_range():
    """What it does catch: a word above count x max_code (here: client 3 adds 20 x max_code + 1)."""
    config = _config(2, check=True)
    result, _, _ = _round(20, config, _shift(20 * config.fixed_point.max_code + 1, 0))
    assert isinstance(result, RoundFailed) and "out of range" in str(result)
