"""The protocol end to end: sums, drop-outs, refusals, replays, and what a masked vector shows."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from secagg_testkit import drive, seeded_random

from fedkd.secagg import (
    ADVERTISE_KEYS, CONSISTENCY_CHECK, MASKED_INPUT, SHARE_KEYS, UNMASK, ProtocolError, RoundFailed,
    SecAggClient, SecAggConfig, SecAggServer, run_in_memory,
)
from fedkd.secagg.graph import neighbour_graph, ring_order
from fedkd.secagg.messages import MESSAGE_TYPES, AdvertiseKeysReply, UnmaskRequest
from fedkd.secagg.quantize import unpack
from fedkd.secagg.stages import stages_for

SESSION = b"test-session"


def _vectors(n, dim, seed=0, spread=1.2):
    rng = np.random.default_rng(seed)
    return {cid: rng.uniform(-spread, spread, dim).astype(np.float32) for cid in range(10, 10 + n)}


def _plain(vectors, survivors, config):
    codec = config.fixed_point
    codes = sum(codec.encode(vectors[c])[0].astype(np.uint64) for c in survivors)
    clipped_sum = sum(np.clip(vectors[c].astype(np.float64), -config.clip, config.clip) for c in survivors)
    return codes & np.uint64((1 << config.bit_width) - 1), clipped_sum


# --- sums -------------------------------------------------------------------------------------


@st.composite
def rounds(draw):
    n = draw(st.integers(3, 12))
    complete = draw(st.booleans()) or n < 5
    k = n - 1 if complete else draw(st.sampled_from(range(2, n - 1, 2)))
    t = draw(st.integers(k // 2 + 1, k))
    c = draw(st.integers(0, t - 1))
    consistency = draw(st.booleans())
    bits = draw(st.sampled_from([20, 32, 37, 64]))
    config = SecAggConfig(neighbors=k, threshold=t, max_colluders=c, consistency_check=consistency,
                          bit_width=bits, clip=1.0, scale=2.0**10)
    need = max(t, k + c + 1 - t)  # live neighbours each client keeps: t seed shares, m partners
    # Mostly within what the round survives (k - need drop-outs in all), sometimes one more.
    budget = draw(st.integers(0, k - need + 1))
    gone = draw(st.lists(st.sampled_from(range(10, 10 + n)), unique=True, min_size=budget, max_size=budget))
    stages = stages_for(consistency)
    drop = {stage: set() for stage in stages}
    for cid in gone:
        drop[draw(st.sampled_from(stages))].add(cid)
    return config, n, drop, draw(st.integers(1, 40)), draw(st.integers(0, 1000))


@settings(max_examples=60, derandomize=True, deadline=None)
@given(rounds())
def test_unmasked_sum_equals_plain_sum_or_the_round_fails_cleanly(case):
    config, n, drop, dim, seed = case
    vectors = _vectors(n, dim, seed)
    total_dropped = sum(len(g) for g in drop.values())
    try:
        result = run_in_memory(vectors, config, SESSION, drop=drop, random_bytes=seeded_random(seed))
    except RoundFailed as err:
        note(str(err))
        # In the complete graph, a round with at most n-1-max(t, m) drop-outs in all must survive,
        # unless a survivor that masked with a drop-out stops answering: only it can reveal that
        # pairwise seed (the price of never sharing mask keys; see docs/secagg.md).
        k, t, c = config.neighbors, config.threshold, config.max_colluders
        late = drop.get(CONSISTENCY_CHECK, set()) | drop.get(UNMASK, set())
        assert not (k == n - 1 and total_dropped <= n - 1 - max(t, k + c + 1 - t)
                    and not (drop.get(MASKED_INPUT) and late))
        return
    integer_sum, clipped_sum = _plain(vectors, result.survivors, config)
    assert np.array_equal(result.integer_sum.astype(np.uint64), integer_sum)  # exact, in the ring
    assert np.abs(result.sum - clipped_sum).max() <= result.count / (2 * config.scale) + 1e-9
    assert result.count == len(result.survivors)
    early = set().union(*(result.dropped[s] for s in (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT)))
    assert set(result.survivors).isdisjoint(early)  # later drop-outs are still in the sum
    assert result.clipped == sum(int(np.count_nonzero(np.abs(vectors[c]) > 1.0)) for c in result.survivors)


def test_sparse_round_survives_ten_percent_drop_out_before_masked_input():
    vectors = _vectors(60, 50, seed=1)
    config = SecAggConfig()  # k = 2 * ceil(log2 60) = 12, t = 7
    rng = np.random.default_rng(1)
    gone = set(rng.choice(sorted(vectors), 6, replace=False).tolist())
    result = run_in_memory(vectors, config, SESSION, drop={MASKED_INPUT: gone}, random_bytes=seeded_random(1))
    assert result.count == 54 and result.dropped[MASKED_INPUT] == tuple(sorted(gone))
    integer_sum, _ = _plain(vectors, result.survivors, config)
    assert np.array_equal(result.integer_sum.astype(np.uint64), integer_sum)


def test_stochastic_rounding_round_is_exact_in_the_ring_and_close_in_floats():
    vectors = _vectors(8, 200, seed=2)
    config = SecAggConfig(stochastic_rounding=True, scale=2.0**8)
    result = run_in_memory(vectors, config, SESSION, random_bytes=seeded_random(2))
    plain = sum(np.clip(v.astype(np.float64), -1, 1) for v in vectors.values())
    assert np.abs(result.sum - plain).max() <= 8 / config.scale


# --- drop-outs the round cannot survive -------------------------------------------------------


@pytest.mark.parametrize("stage", [ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, CONSISTENCY_CHECK, UNMASK])
def test_too_many_drop_outs_raise_round_failed_naming_the_stage(stage):
    vectors = _vectors(6, 4)
    config = SecAggConfig(neighbors=5, threshold=4, consistency_check=True)
    gone = set(sorted(vectors)[:3])  # 3 of 6 leave: each survivor has 2 live neighbours, t = 4
    with pytest.raises(RoundFailed) as info:
        run_in_memory(vectors, config, SESSION, drop={stage: gone}, random_bytes=seeded_random(3))
    assert info.value.stage == stage
    assert info.value.needed == 4 and info.value.missing >= 1
    assert stage in str(info.value) and "missing" in str(info.value)


def _peel(graph, alive, t):
    """Reference: repeatedly remove clients with fewer than t live neighbours."""
    alive = set(alive)
    while thin := {c for c in alive if len(graph[c] & alive) < t}:
        alive -= thin
    return alive


@pytest.mark.parametrize("gone_positions", [(0, 1), (0, 5, 10), (0, 1, 2), (0, 1, 2, 3), (3, 7, 11, 15)])
def test_clients_left_without_enough_neighbours_are_excluded_before_masks_exist(gone_positions):
    """On a ring with t > k/2 exclusions cascade; the server must match the reference peel:
    the round goes on without exactly the clients it leaves, or fails if it leaves none."""
    vectors = _vectors(16, 4)
    ring = ring_order(SESSION, sorted(vectors))
    graph = neighbour_graph(SESSION, ring, 8)
    config = SecAggConfig(neighbors=8, threshold=5, max_colluders=0)  # m = 4 < t: t decides who stays
    gone = {ring[p] for p in gone_positions}
    kept = _peel(graph, set(ring) - gone, 5)
    drop = {ADVERTISE_KEYS: gone}
    if not kept:
        with pytest.raises(RoundFailed, match="advertise_keys"):
            run_in_memory(vectors, config, SESSION, drop=drop, random_bytes=seeded_random(4))
        return
    result = run_in_memory(vectors, config, SESSION, drop=drop, random_bytes=seeded_random(4))
    assert set(result.survivors) == kept
    assert set(result.dropped[ADVERTISE_KEYS]) == set(ring) - kept
    integer_sum, _ = _plain(vectors, result.survivors, config)
    assert np.array_equal(result.integer_sum.astype(np.uint64), integer_sum)


# --- a client's refusals ----------------------------------------------------------------------


def _round_until_unmask(consistency=False, n=5):
    """Clients and server of a complete-graph round, run up to the unmask requests."""
    config = SecAggConfig(consistency_check=consistency)
    vectors = _vectors(n, 3)
    rb = seeded_random(5)
    server = SecAggServer(config, SESSION, sorted(vectors), dim=3)
    clients = {c: SecAggClient(c, config, SESSION, rb) for c in vectors}
    return server, clients, drive(server, clients, server.start(), vectors, UNMASK)


def test_client_refuses_to_reveal_both_secrets_of_one_peer():
    _, clients, requests = _round_until_unmask()
    me, request = next(iter(requests.items()))
    peer = next(c for c in request.survivors if c != me)
    greedy = dataclasses.replace(request, dropped=tuple(sorted(request.dropped + (peer,))))
    with pytest.raises(ProtocolError, match="both secrets"):
        clients[me].handle(greedy)
    with pytest.raises(ProtocolError):  # and it stays refused, even for an honest request
        clients[me].handle(request)


@pytest.mark.parametrize("tamper, message", [
    (lambda r, me, peer: dataclasses.replace(r, survivors=tuple(c for c in r.survivors if c != peer)),
     "do not match"),  # a neighbour it masked with vanishes from both lists
    (lambda r, me, peer: dataclasses.replace(r, survivors=tuple(c for c in r.survivors if c != me),
                                             dropped=tuple(sorted(r.dropped + (me,)))), "listed as dropped"),
    (lambda r, me, peer: dataclasses.replace(r, survivors=(me,), dropped=tuple(sorted(set(r.survivors) - {me}))),
     "at least m="),  # everyone else "dropped": it would reveal every pairwise seed
    (lambda r, me, peer: dataclasses.replace(r, survivors=tuple(reversed(r.survivors))), "sorted"),
])
def test_client_refuses_inconsistent_survivor_lists(tamper, message):
    _, clients, requests = _round_until_unmask()
    me, request = next(iter(requests.items()))
    peer = next(c for c in request.survivors if c != me)
    with pytest.raises(ProtocolError, match=message):
        clients[me].handle(tamper(request, me, peer))


def test_with_the_consistency_check_a_client_refuses_a_survivor_set_it_did_not_sign():
    _, clients, requests = _round_until_unmask(consistency=True, n=6)
    me, request = next(iter(requests.items()))
    peer = next(c for c in request.survivors if c != me)
    # Move a peer from survivors to dropped: consistent lists, but not the signed set.
    shifted = dataclasses.replace(
        request, survivors=tuple(c for c in request.survivors if c != peer),
        dropped=tuple(sorted(request.dropped + (peer,))),
        signatures={j: s for j, s in request.signatures.items() if j != peer},
    )
    with pytest.raises(ProtocolError, match="differs from the one this client signed"):
        clients[me].handle(shifted)


def test_with_the_consistency_check_a_forged_signature_is_refused():
    _, clients, requests = _round_until_unmask(consistency=True, n=6)
    me, request = next(iter(requests.items()))
    j = next(iter(request.signatures))
    forged = {**request.signatures, j: bytes(64)}
    with pytest.raises(ProtocolError, match="does not verify"):
        clients[me].handle(dataclasses.replace(request, signatures=forged))


def test_honest_unmask_completes_after_refusals_elsewhere():
    server, clients, requests = _round_until_unmask()
    result = server.finish(clients[c].handle(r) for c, r in requests.items())
    assert result.count == 5


# --- replays, wrong stage, wrong session ------------------------------------------------------


def test_client_refuses_out_of_stage_and_replayed_requests():
    config = SecAggConfig()
    server = SecAggServer(config, SESSION, [1, 2, 3], dim=2)
    requests = server.start()
    client = SecAggClient(1, config, SESSION, seeded_random(6))
    client.handle(requests[1])
    with pytest.raises(ProtocolError, match="expects ShareKeysRequest"):
        client.handle(requests[1])  # replay of the set-up request
    assert client.state == "failed"

    fresh = SecAggClient(2, config, SESSION, seeded_random(6))
    with pytest.raises(ProtocolError, match="session"):
        fresh.handle(dataclasses.replace(requests[2], session_id=b"another round"))
    with pytest.raises(ProtocolError):
        SecAggClient(3, config, SESSION).handle(requests[2])  # addressed to someone else


def test_client_refuses_a_server_running_other_parameters():
    server = SecAggServer(SecAggConfig(scale=2.0**12), SESSION, [1, 2, 3], dim=2)
    request = server.start()[1]
    with pytest.raises(ProtocolError, match="digest"):
        SecAggClient(1, SecAggConfig(), SESSION).handle(request)


def test_server_refuses_replays_strangers_and_wrong_stage_without_losing_its_state():
    config = SecAggConfig()
    vectors = _vectors(4, 3)
    server = SecAggServer(config, SESSION, sorted(vectors), dim=3)
    clients = {c: SecAggClient(c, config, SESSION, seeded_random(c)) for c in vectors}
    requests = server.start()
    replies = [clients[c].handle(r) for c, r in requests.items()]
    server.receive(replies[0])
    with pytest.raises(ProtocolError, match="replay"):
        server.receive(replies[0])
    with pytest.raises(ProtocolError, match="not asked"):
        server.receive(dataclasses.replace(replies[1], sender=99))
    with pytest.raises(ProtocolError, match="session"):
        server.receive(dataclasses.replace(replies[1], session_id=b"old round"))
    with pytest.raises(ProtocolError, match="32 bytes"):
        server.receive(dataclasses.replace(replies[1], mask_public_key=b"short"))
    for reply in replies[1:]:
        server.receive(reply)
    requests = server.advance()
    with pytest.raises(ProtocolError, match="takes ShareKeysReply"):
        server.receive(replies[2])  # an advertise reply, replayed one stage late
    requests = drive(server, clients, requests, vectors, UNMASK)  # the round still completes
    result = server.finish(clients[c].handle(r) for c, r in requests.items())
    integer_sum, _ = _plain(vectors, sorted(vectors), config)
    assert np.array_equal(result.integer_sum.astype(np.uint64), integer_sum)


def test_bad_vectors_are_refused_before_masking_and_the_client_can_retry():
    config = SecAggConfig()
    vectors = _vectors(3, 4)
    server = SecAggServer(config, SESSION, sorted(vectors), dim=4)
    clients = {c: SecAggClient(c, config, SESSION, seeded_random(c)) for c in vectors}
    requests = drive(server, clients, server.start(), vectors, MASKED_INPUT)
    me = next(iter(requests))
    for bad in (np.array([0.0, np.nan, 0.0, 0.0]), np.zeros(5), None):
        with pytest.raises(ValueError):
            clients[me].handle(requests[me], bad)
    assert clients[me].state == MASKED_INPUT
    clients[me].handle(requests[me], vectors[me])


# --- what a single masked vector shows ---------------------------------------------------------


def test_a_lone_masked_vector_looks_uniform_and_hides_the_input():
    dim = 40_000
    config = SecAggConfig(neighbors=2, threshold=2)
    ids = [1, 2, 3]
    server = SecAggServer(config, SESSION, ids, dim=dim)
    clients = {c: SecAggClient(c, config, SESSION, seeded_random(c)) for c in ids}
    requests = drive(server, clients, server.start(), {}, MASKED_INPUT)
    zeros = np.zeros(dim, dtype=np.float32)  # a maximally structured input: every code is 2^16
    reply = clients[1].handle(requests[1], zeros)
    masked = unpack(reply.masked, dim + 1, config.bit_width)[:-1].astype(np.uint64)
    assert np.count_nonzero(masked == 2**16) <= 2  # differs from the encoded input
    # Chi-square over 64 buckets, on the top bits and on the low bits; 63 degrees of freedom,
    # 0.1 % critical value 103.4. With a fixed seed the test is deterministic.
    for buckets in (masked >> np.uint64(26), masked & np.uint64(63)):
        counts = np.bincount(buckets.astype(np.int64), minlength=64)
        expected = dim / 64
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 103.4, chi2


# --- configuration and messages ---------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(neighbors=4, threshold=2), r"threshold must be in 3..4"),
    (dict(neighbors=4, threshold=5), r"threshold must be in 3..4"),
    (dict(bit_width=1), r"bit_width must be an int in 2..64"),
    (dict(max_clients=1), r"max_clients must be an int >= 2"),
    (dict(max_clients=10, neighbors=10), r"neighbors must be in 1..9"),
    (dict(bit_width=16, max_clients=10), r"bit_width >= 21"),
    (dict(consistency_check="yes"), r"consistency_check must be True or False"),
])
def test_bad_config_values_are_named_with_their_valid_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SecAggConfig(**kwargs)


@pytest.mark.parametrize("n, kwargs, dim, message", [
    (10, dict(neighbors=3), 5, r"n-1\) or an even number in 2..8"),
    (1, dict(), 5, r"at least 2 clients"),
    (5, dict(max_clients=4), 5, r"more than max_clients=4"),
    (300, dict(bit_width=24), 5, r"bit_width >= 26"),
])
def test_session_parameters_are_checked_against_the_real_client_count(n, kwargs, dim, message):
    with pytest.raises(ValueError, match=message):
        SecAggServer(SecAggConfig(**kwargs), SESSION, range(n), dim=dim)


def test_neighbour_graph_is_symmetric_regular_and_fixed_by_the_session():
    ids = list(range(100, 140))
    graph = neighbour_graph(SESSION, ids, 8)
    assert all(len(peers) == 8 and c not in peers for c, peers in graph.items())
    assert all(c in graph[p] for c, peers in graph.items() for p in peers)
    assert graph == neighbour_graph(SESSION, list(reversed(ids)), 8)
    assert graph != neighbour_graph(b"another session", ids, 8)


def test_messages_hold_only_codec_friendly_fields():
    allowed = {"int", "float", "str", "bytes", "bool", "tuple[int, ...]", "dict[int, bytes]"}
    for name, cls in MESSAGE_TYPES.items():
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        assert {"session_id"} <= {f.name for f in dataclasses.fields(cls)}
        assert {"sender", "recipient"} & {f.name for f in dataclasses.fields(cls)}
        assert {f.type for f in dataclasses.fields(cls)} <= allowed, name
    with pytest.raises(dataclasses.FrozenInstanceError):
        AdvertiseKeysReply(SESSION, 1, b"", b"", b"", b"").sender = 2


def test_unmask_request_type_is_registered_by_name():
    assert MESSAGE_TYPES["UnmaskRequest"] is UnmaskRequest


def test_clipped_count_survives_masking_when_it_needs_several_words():
    vectors = _vectors(5, 100, seed=7, spread=3.0)
    config = SecAggConfig(clip=1.0, scale=4.0, bit_width=16)  # digits in base 9: 3 words for 0..100
    assert config.fixed_point.count_slots(100) == 3
    result = run_in_memory(vectors, config, SESSION, random_bytes=seeded_random(7))
    assert result.clipped == sum(int(np.count_nonzero(np.abs(v) > 1.0)) for v in vectors.values()) > 81


def test_a_client_rebuilt_from_its_state_at_every_stage_gives_the_same_round():
    """Transports that keep no objects between messages (Flower ClientApps) save to_state()."""
    config = SecAggConfig(consistency_check=True)
    vectors = _vectors(6, 20, seed=8)

    def run(rebuild):
        server = SecAggServer(config, SESSION, sorted(vectors), dim=20)
        states = {c: SecAggClient(c, config, SESSION).to_state() for c in vectors}
        objects = {c: SecAggClient(c, config, SESSION, seeded_random(c)) for c in vectors}
        requests = server.start()
        while True:
            stage, replies = server.stage, []
            for c, request in requests.items():
                client = SecAggClient.from_state(states[c], config, seeded_random(bytes([c, len(stage)]))) \
                    if rebuild else objects[c]
                replies.append(client.handle(request, vectors[c] if stage == MASKED_INPUT else None))
                states[c] = client.to_state()
                _assert_plain(states[c])
            if stage == UNMASK:
                return server.finish(replies)
            requests = server.step(replies)

    assert np.array_equal(run(rebuild=True).integer_sum, run(rebuild=False).integer_sum)
    client = SecAggClient(10, config, SESSION)
    client.handle(SecAggServer(config, SESSION, sorted(vectors), dim=20).start()[10])
    with pytest.raises(ValueError, match="different config"):
        SecAggClient.from_state(client.to_state(), SecAggConfig(consistency_check=False), seeded_random(0))


def _assert_plain(value):
    if isinstance(value, dict):
        assert all(isinstance(k, (int, str)) for k in value)
        for v in value.values():
            _assert_plain(v)
    elif isinstance(value, tuple):
        for v in value:
            _assert_plain(v)
    else:
        assert isinstance(value, (int, float, str, bytes, bool)), type(value)


def test_a_failed_or_finished_server_takes_nothing_more():
    vectors = _vectors(4, 3)
    config = SecAggConfig()
    server = SecAggServer(config, SESSION, sorted(vectors), dim=3)
    clients = {c: SecAggClient(c, config, SESSION) for c in vectors}
    requests = server.start()
    replies = [clients[c].handle(r) for c, r in requests.items()]
    with pytest.raises(RoundFailed):
        server.advance()  # nobody answered
    assert server.stage == "failed"
    with pytest.raises(ProtocolError, match="failed"):
        server.receive(replies[0])
    with pytest.raises(ProtocolError):
        server.advance()


def test_memory_does_not_grow_with_the_number_of_clients():
    """Inputs made on demand and masked inputs folded into the sum as they come: the peak is a
    few vectors whatever n is, never n vectors."""
    import tracemalloc
    from collections.abc import Mapping

    dim = 50_000

    class OnDemand(Mapping):
        def __init__(self, n):
            self.n = n

        def __getitem__(self, cid):
            return np.random.default_rng(cid).uniform(-1, 1, dim).astype(np.float32)

        def __iter__(self):
            return iter(range(self.n))

        def __len__(self):
            return self.n

    peaks = {}
    for n in (30, 120):
        tracemalloc.start()
        run_in_memory(OnDemand(n), SecAggConfig(), SESSION, drop={MASKED_INPUT: {1, 2, 3}}, dim=dim)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    per_extra_client = (peaks[120] - peaks[30]) / 90  # keys, shares, envelopes: some kB each
    assert per_extra_client < 0.25 * 4 * dim  # well under a vector (200 kB) per client
    assert peaks[120] < 120 * 4 * dim / 4  # far below holding every input
