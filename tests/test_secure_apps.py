"""Secure aggregation over Flower: the codec, the client's saved state, and end-to-end simulations
in which the server is shown to receive no client's plain vector."""

import json
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedkd.apps import codec
from fedkd.aggregate import auto_clip
from fedkd.simulation import simulate
from fedkd.config import Config, ConfigError
from fedkd.secagg import ProtocolError, SecAggClient, SecAggConfig, SecAggServer, UNMASK
from fedkd.secagg.quantize import pack
from fedkd.secagg.messages import MESSAGE_TYPES, MaskedInputReply


def _all_messages():
    """Every message of one in-memory round (with the consistency check: all ten types)."""
    cfg = SecAggConfig(consistency_check=True)
    ids = [0, 1, 2, 3]
    server = SecAggServer(cfg, b"s", ids, 5)
    clients = {i: SecAggClient(i, cfg, b"s") for i in ids}
    seen, requests = [], server.start()
    while True:
        seen += requests.values()
        stage = server.stage
        replies = [clients[i].handle(r, np.full(5, 0.1 * i) if type(r).__name__ == "MaskedInputRequest" else None)
                   for i, r in requests.items()]
        seen += replies
        if stage == UNMASK:
            return seen, server.finish(replies)
        requests = server.step(replies)


def test_codec_round_trips_every_message_type():
    seen, result = _all_messages()
    assert {type(m).__name__ for m in seen} == set(MESSAGE_TYPES)
    for message in seen:
        assert codec.decode(codec.encode(message)) == message
    np.testing.assert_allclose(result.sum, np.full(5, 0.6), atol=1e-4)


@pytest.mark.parametrize("mutate", [
    lambda rec: rec.__setitem__("type", "Pickle"),
    lambda rec: rec.__setitem__("sender", "zero"),
    lambda rec: rec.__delitem__("masked"),
    lambda rec: rec.__setitem__("session_id", True),
])
def test_malformed_records_are_protocol_errors(mutate):
    content = codec.encode(MaskedInputReply(b"s", 3, b"\x00" * 8))
    mutate(content["secagg"])
    with pytest.raises(ProtocolError):
        codec.decode(content)


def test_missing_record_is_protocol_error():
    with pytest.raises(ProtocolError, match="no 'secagg' record"):
        codec.decode(RecordDict({"other": ConfigRecord({"a": 1})}))


def test_client_state_survives_packing():
    cfg = SecAggConfig()
    server = SecAggServer(cfg, b"s", [0, 1, 2], 4)
    client = SecAggClient(0, cfg, b"s")
    client.handle(server.start()[0])
    state = client.to_state()
    assert codec.unpack_state(codec.pack_state(state)) == state


def test_clip_follows_the_ensemble_rule():
    assert auto_clip(Config(), 10) == 1.0
    assert auto_clip(Config(vote_weighting="class-share"), 10) == 10.0
    assert auto_clip(Config(ensemble="geometric"), 10) == 30.0
    assert auto_clip(Config(secagg_clip=7.0), 10) == 7.0


def test_auto_scale_is_finest_that_fits():
    from fedkd.aggregate import MAX_AUTO_SCALE, auto_scale, secagg_config

    assert auto_scale(Config(secagg_bit_width=32), 1.0) == MAX_AUTO_SCALE  # 10 clients in 32 bits: capped at 2^24
    # the default ring without DP is 24 bits: 10 clients' codes fit, 2^18 steps per unit
    assert Config().ring_bits == 24 and auto_scale(Config(), 1.0) == 2.0**18
    assert secagg_config(Config(), 10).fixed_point.required_bits(10) <= 24
    assert Config(dp_clip=1.0, dp_noise_multiplier=1.0).ring_bits == 32  # DP noise needs the room
    big = Config(num_clients=5000, secagg_bit_width=32)
    scale = auto_scale(big, 1.0)
    assert 5000 * math.ceil(2 * scale) < 2**32 <= 5000 * math.ceil(2 * 4 * scale)  # fits, and not 2 bits coarser
    assert secagg_config(big, 10).fixed_point.required_bits(5000) <= 32
    assert auto_scale(Config(secagg_scale=1024.0), 1.0) == 1024.0


def test_plain_aggregation_is_the_secure_sum_bit_for_bit():
    from fedkd.aggregate import secagg_config
    from fedkd.apps.secure import fixed_point_sum
    from fedkd.secagg import run_in_memory

    config = Config(num_clients=8)
    rng = np.random.default_rng(1)
    vectors = {c: rng.dirichlet(np.ones(10), 30).ravel().astype(np.float32) for c in range(8)}
    plain = fixed_point_sum(config, 10)(vectors)
    secure = run_in_memory(vectors, secagg_config(config, 10))
    assert plain.total.dtype == secure.sum.dtype == np.float64
    assert np.array_equal(plain.total, secure.sum) and plain.count == secure.count == 8
    # control: the float64 sum the plain path used before differs in the last digits
    assert not np.array_equal(sum(v.astype(np.float64) for v in vectors.values()), secure.sum)


def test_drop_plan_is_validated():
    assert Config(drop="unmask:1,2;share_keys:0").drop_plan == {"unmask": {1, 2}, "share_keys": {0}}
    with pytest.raises(ConfigError, match="drop stage 'later' is unknown"):
        Config.from_run_config({"drop": "later:1"})
    with pytest.raises(ConfigError, match="needs aggregation=secagg"):
        Config.from_run_config({"drop": "unmask:1", "aggregation": "plain"})
    with pytest.raises(ConfigError, match=r"0\.\.9"):
        Config.from_run_config({"drop": "unmask:12"})


# ---- end to end ------------------------------------------------------------------------------

SMALL = dict(num_clients=4, rounds=1, local_epochs=5, digest_epochs=0, distill_epochs=15, num_public=150)


def _check_starts(cfg, own, teacher_init, sent, seen):
    """Every train message carries exactly the start of its node's partition's architecture (the
    replies name each node's partition); with architecture students a roll call came first."""
    from fedkd import task
    from fedkd.apps.cohort import ROLL_CALL
    from fedkd.apps.node import clients_of

    shape = task.splits_for(cfg).input_shape
    trains = [m for m in sent if m.metadata.message_type == "train"]
    assert all(len(clients_of(m.content)) == 1 for m in trains)  # one client per node (num-nodes 4)
    pid_of = {m.metadata.dst_node_id: clients_of(m.content)[0] for m in trains}
    assert len(trains) == 2 * 4 and len(pid_of) == 4
    for m in trains:
        arch = task.resolve(cfg.teacher_model_for(pid_of[m.metadata.dst_node_id]), shape)
        starts = {k for k in m.content if k == "student" or k.startswith("student-")}
        want = {f"student-{arch}"} if arch in own else {"student"} if teacher_init == "student" else set()
        assert starts == want, (arch, starts)
    assert own <= {task.resolve(cfg.teacher_model_for(p), shape) for p in pid_of.values()}
    if own:
        assert sent[0].metadata.message_type == ROLL_CALL


class RecordingGrid:
    """Wraps the server's Grid and keeps every message it receives."""

    def __init__(self, grid, received, sent=None):
        self._grid, self.received, self.sent = grid, received, sent

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if self.sent is not None:
            self.sent.extend(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.received.extend(replies)
        return replies

    def __getattr__(self, name):
        return getattr(self._grid, name)


def _payload_bytes(msg):
    """Every bytes value and array buffer in a received message."""
    if msg.has_error():
        return []
    out = []
    for record in msg.content.values():
        for value in record.values():
            if isinstance(value, (bytes, bytearray)):
                out.append(bytes(value))
            elif isinstance(value, list):
                out += [bytes(v) for v in value if isinstance(v, (bytes, bytearray))]
            elif hasattr(value, "numpy"):
                out.append(value.numpy().tobytes())
    return out


def _leaks(received, vectors, fixed_point, bit_width=24):
    """Which clients' vectors appear in what the server received, as float32 or as fixed-point codes."""
    blobs = [b for msg in received for b in _payload_bytes(msg)]
    found = set()
    for pid, vec in enumerate(vectors):
        probes = [vec[:64].astype(np.float32).tobytes()]
        codes, _ = fixed_point.encode(vec[:64])
        probes.append(codes.astype(np.uint32).tobytes())
        probes.append(pack(codes[:56], bit_width)[:-1])  # as a masked vector travels: packed at the ring's width
        if any(p in blob for p in probes for blob in blobs):
            found.add(pid)
    return found


DEFAULT_TRANSFER = {"teacher_init": "student", "vote_weighting": "seen-classes", "confidence_weighting": "none",
                    "consensus_weight": 1.0, "public_views": 0,  # digits: 8x8, too small for auto views
                    "server_step": 1.5,  # auto: a step past the ensemble under the mean rule
                    "architecture_students": []}  # one architecture: the student is every teacher's


@pytest.mark.parametrize("options, expected", [
    ({}, DEFAULT_TRANSFER),  # defaults: teachers from the student, joint consensus training, seen-classes weights
    ({"teacher_init": "persist", "digest_epochs": 1, "confidence_weighting": "max-prob"},
     {"teacher_init": "persist", "vote_weighting": "none", "confidence_weighting": "max-prob",
      "consensus_weight": 1.0}),
    # two shifted views of each public example, labelled by the teachers through the same sum
    ({"public_views": 2, "view_flip": False}, dict(DEFAULT_TRANSFER, public_views=2, view_flip=False)),
    # no step past the ensemble (the default steps: the server's own work on the sum, the uploads unchanged)
    ({"server_step": 1.0}, dict(DEFAULT_TRANSFER, server_step=1.0)),
    # mixed teachers: the CNN clients start from a CNN student of the server's (digits: the student is an MLP)
    ({"teacher_models": "mlp,cnn"}, dict(DEFAULT_TRANSFER, architecture_students=["cnn"])),
], ids=["defaults", "persist-confidence", "views", "no-server-step", "mixed-teachers"])
def test_server_never_sees_a_plain_vector_and_matches_plain_accuracy(tmp_path, options, expected):
    from fedkd.aggregate import secagg_config
    from fedkd.apps.node import entries

    # one client per node: what each client (an organisation) downloads and uploads is visible
    settings = dict(SMALL, rounds=2, num_nodes=4, **options)
    plain_cfg = Config(**settings, aggregation="plain", out=str(tmp_path / "plain"))
    secure_cfg = Config(**settings, aggregation="secagg", out=str(tmp_path / "secure"))
    fixed_point = secagg_config(secure_cfg, 10).fixed_point

    seen_plain, seen_secure, sent, sent_plain = [], [], [], []
    plain = simulate(plain_cfg, observe_grid=lambda g: RecordingGrid(g, seen_plain, sent_plain))
    secure = simulate(secure_cfg, observe_grid=lambda g: RecordingGrid(g, seen_secure, sent))
    # every vector of both rounds, as the plain run's clients sent them: the secure run's are the
    # same bit for bit (same seeds, and sums equal to the plain fixed-point sums)
    vectors = [rec["vector"].numpy() for m in seen_plain if not m.has_error()
               for _, rec in sorted(entries(m.content, "payload").items())]
    assert len(vectors) == 2 * 4
    rows = 150 * (1 + options.get("public_views", 0))  # the public sample, then its views
    blocks = vectors[0][: rows * 10].reshape(-1, 150, 10)  # (1 + views, 150, K)
    assert (blocks.sum(2).max(1) > 0).all()  # weighted soft labels in every block, not an empty one
    # each view block labels other inputs than the sample: not a copy of the sample's block
    assert all(not np.allclose(blocks[0], blocks[j]) for j in range(1, len(blocks)))

    # the probe can fail: under plain aggregation it finds every client's vector, in both rounds
    assert _leaks(seen_plain, vectors, fixed_point) == set(range(8))
    # under secure aggregation it finds none, and no reply carries a payload record
    assert _leaks(seen_secure, vectors, fixed_point) == set()
    assert all(not entries(m.content, "payload") for m in seen_secure if not m.has_error())
    assert any(entries(m.content, "secagg") for m in seen_secure)

    # plain runs secagg's fixed-point encoding without masks: the same sums, so the same run
    assert plain["final"]["student_accuracy"] == secure["final"]["student_accuracy"] > 0.6  # chance: 0.1
    assert plain["final"]["ensemble_accuracy"] == secure["final"]["ensemble_accuracy"]
    # results.json shows what the options resolved to
    transfer = json.loads((tmp_path / "secure" / "results.json").read_text())["config"]["resolved"]["transfer"]
    assert {k: transfer[k] for k in expected} == expected
    # each client downloads the one model it starts from (download only): its architecture's
    # student where the server keeps one (the CNN clients here), else the student (none under
    # teacher-init persist); in both runs (plain runs make the roll call for it); and it is reported
    own = set(expected.get("architecture_students", []))
    for sent_, seen in ((sent, seen_secure), (sent_plain, seen_plain)):
        _check_starts(secure_cfg, own, transfer["teacher_init"], sent_, seen)
    assert all((r["prototype_accuracy"] is None) == (not own) for r in secure["rounds"])
    if own:
        assert secure["rounds"][1]["prototype_accuracy"]["cnn"] > 0.3  # chance: 0.1
    info = secure["rounds"][1]["secagg"]
    assert info["survivors"] == [0, 1, 2, 3] and info["clipped"] == 0
    # the consistency check is on by default (it was off before issue 13)
    assert set(info["seconds_per_stage"]) == {"advertise_keys", "share_keys", "masked_input", "consistency_check",
                                              "unmask"}


def test_round_survives_a_client_dropping_after_masked_input(tmp_path):
    cfg = Config(**SMALL, drop="unmask:2", secagg_consistency_check=True, out=str(tmp_path))
    results = simulate(cfg)
    info = results["rounds"][0]["secagg"]
    assert results["status"] == "completed"
    assert info["survivors"] == [0, 1, 2, 3]  # its masked input was in; neighbours' shares unmask it
    assert info["dropped"] == {"unmask": [2]}
    assert "consistency_check" in info["seconds_per_stage"]  # signed survivor sets, over Flower too
    assert results["final"]["student_accuracy"] > 0.5


class ExchangeGrid:
    """Wraps the server's Grid; keeps every exchange as (sent messages, replies)."""

    def __init__(self, grid, exchanges):
        self._grid, self.exchanges = grid, exchanges

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.exchanges.append((messages, replies))
        return replies

    def __getattr__(self, name):
        return getattr(self._grid, name)


@pytest.mark.parametrize("nodes", [4, 2])  # one client per node; two per node
def test_keys_travel_with_training_and_a_client_that_sends_none_is_a_drop_out(tmp_path, nodes):
    from fedkd.apps.node import clients_of, entries, entry_key

    cfg = Config(**dict(SMALL, rounds=2), drop="advertise_keys:1", num_nodes=nodes, out=str(tmp_path))
    exchanges = []
    results = simulate(cfg, observe_grid=lambda g: ExchangeGrid(g, exchanges))
    assert results["status"] == "completed"
    kinds = [msgs[0].metadata.message_type for msgs, _ in exchanges]
    # one roll call per run, then per round: training (with the keys) and four stages, not five
    assert kinds == ["query.roll_call"] + 2 * (["train"] + 4 * ["query.secagg"])
    for msgs, replies in (e for e in exchanges if e[0][0].metadata.message_type == "train"):
        assert len(msgs) == len(replies) == nodes and not any(r.has_error() for r in replies)
        for msg in msgs:  # each client's own request, in its node's message, addressed to it
            for pid in clients_of(msg.content):
                request = codec.decode(RecordDict({codec.RECORD: msg.content[entry_key(codec.RECORD, pid)]}))
                assert type(request).__name__ == "AdvertiseKeysRequest"
                assert request.recipient == pid
        with_keys = sorted(pid for r in replies for pid in entries(r.content, codec.RECORD))
        assert with_keys == [0, 2, 3]  # client 1 trained and replied, without keys
        assert sorted(pid for r in replies for pid in entries(r.content, "metrics")) == [0, 1, 2, 3]
    for msgs, _ in exchanges[1:]:  # no advertise-keys request is ever sent alone
        if msgs[0].metadata.message_type == "query.secagg":
            sent = {type(codec.decode(RecordDict({codec.RECORD: rec}))).__name__
                    for m in msgs for rec in entries(m.content, codec.RECORD).values()}
            assert sent and "AdvertiseKeysRequest" not in sent
    for record in results["rounds"]:
        assert record["secagg"]["dropped"] == {"advertise_keys": [1]}
        assert record["secagg"]["survivors"] == [0, 2, 3] and record["contributors"] == 3
    assert results["final"]["student_accuracy"] > 0.5  # chance: 0.1


def _session_of_three():
    """A secure session of clients 0, 1, 2 (run 7, round 1) and a vector held by each node."""
    from fedkd.aggregate import secagg_config
    from fedkd.apps.secure import keep_vector, session_for

    config = Config(num_clients=3)
    server = SecAggServer(secagg_config(config, 10), session_for(7, 1), [0, 1, 2], 4)
    states = {i: RecordDict() for i in range(3)}
    for i in range(3):
        keep_vector(states[i], i, np.zeros(4, np.float32))
    return config, server, states


def test_a_train_message_carries_only_an_advertise_request_and_once_per_round():
    from fedkd.apps.secure import STATE_KEY, VECTOR_KEY, keys_with_training

    config, server, states = _session_of_three()
    advertise = {i: codec.encode(r) for i, r in server.start().items()}
    for i in range(3):  # the keys come back with training, and each node keeps its session
        keys = keys_with_training(advertise[i], states[i], config, i, 10, 1, run_id=7)
        server.receive(codec.decode(RecordDict({codec.RECORD: keys})))
        assert STATE_KEY in states[i] and VECTOR_KEY in states[i]
    share = {i: codec.encode(r) for i, r in server.advance().items()}  # real share-keys requests
    # a later stage's request inside a train message is refused, though the session would answer it
    assert keys_with_training(share[0], states[0], config, 0, 10, 1, run_id=7) is None
    assert STATE_KEY not in states[0] and VECTOR_KEY not in states[0]  # secrets and vector wiped
    # the same round's advertise request again (a second train message) is refused and wipes too
    assert keys_with_training(advertise[1], states[1], config, 1, 10, 1, run_id=7) is None
    assert STATE_KEY not in states[1] and VECTOR_KEY not in states[1]


def test_a_stage_request_cannot_open_a_session_and_later_stages_are_answered():
    from fedkd.apps.secure import STATE_KEY, VECTOR_KEY, keys_with_training, stage_step

    config, server, states = _session_of_three()
    advertise = {i: codec.encode(r) for i, r in server.start().items()}
    # an advertise-keys request sent alone (query.secagg) is refused, and the held vector wiped
    with pytest.raises(ProtocolError, match="only with a train message"):
        stage_step(advertise[0], states[0], config, 0, 10, 1, run_id=7)
    assert VECTOR_KEY not in states[0] and STATE_KEY not in states[0]
    # the control: in a session opened with training, the next stage sent alone is answered
    config, server, states = _session_of_three()
    for i, request in server.start().items():
        server.receive(codec.decode(RecordDict({codec.RECORD: keys_with_training(
            codec.encode(request), states[i], config, i, 10, 1, run_id=7)})))
    share = server.advance()
    reply = codec.decode(stage_step(codec.encode(share[1]), states[1], config, 1, 10, 1, run_id=7))
    assert type(reply).__name__ == "ShareKeysReply" and reply.sender == 1


def test_a_malformed_stage_message_wipes_the_session_it_arrives_in():
    from fedkd.apps.secure import STATE_KEY, VECTOR_KEY, keys_with_training, stage_step

    config, server, states = _session_of_three()
    for i, request in server.start().items():
        keys_with_training(codec.encode(request), states[i], config, i, 10, 1, run_id=7)
    assert STATE_KEY in states[0] and VECTOR_KEY in states[0]
    malformed = RecordDict({codec.RECORD: ConfigRecord({"type": "ShareKeysRequest"})})  # fields missing
    with pytest.raises(ProtocolError):
        stage_step(malformed, states[0], config, 0, 10, 1, run_id=7)
    # refused and wiped: the server cannot retry the stage against the old secrets
    assert STATE_KEY not in states[0] and VECTOR_KEY not in states[0]


def test_a_node_settings_error_with_training_is_a_drop_out_not_a_crash(monkeypatch):
    from fedkd.apps.secure import NODE_CONFIG_ENV, STATE_KEY, VECTOR_KEY, keys_with_training

    config, server, states = _session_of_three()
    advertise = server.start()
    monkeypatch.setenv(NODE_CONFIG_ENV, "secagg-min-clients=abc")  # the operator's typo
    assert keys_with_training(codec.encode(advertise[0]), states[0], config, 0, 10, 1, run_id=7) is None
    assert VECTOR_KEY not in states[0] and STATE_KEY not in states[0]


def test_a_reply_entry_counts_only_for_the_client_the_roll_call_tied_to_its_node():
    from types import SimpleNamespace

    from flwr.app import MetricRecord

    from fedkd.apps.driver import _collect

    def reply(node, entries):
        content = RecordDict({f"metrics@{pid}": MetricRecord({"partition-id": float(pid), "train-seconds": secs})
                              for pid, secs in entries})
        return SimpleNamespace(content=content, metadata=SimpleNamespace(src_node_id=node), has_error=lambda: False)

    by_node = {101: [0, 2], 102: [1]}
    cfg = Config(num_clients=3, aggregation="secagg")
    got, failed = _collect([reply(101, [(0, 1.0), (2, 1.0)]), reply(102, [(1, 1.0)])], by_node, 1, cfg, None)
    assert sorted(got) == [0, 1, 2] and failed == {}  # the control: each node answers for its own
    # node 102 answers in client 0's name too: that entry is nobody's answer; client 0's own counts
    got, failed = _collect([reply(101, [(0, 1.0), (2, 1.0)]), reply(102, [(1, 1.0), (0, 99.0)])], by_node, 1, cfg,
                           None)
    assert got[0]["metrics"].train_seconds == 1.0 and failed == {}
    # a reply without one of its clients' metrics: that client is dropped, with the reason
    got, failed = _collect([reply(101, [(0, 1.0)]), reply(102, [(1, 1.0)])], by_node, 1, cfg, None)
    assert sorted(got) == [0, 1] and "no metrics" in failed[2]


def test_too_many_drop_outs_stop_the_run_with_the_stage(tmp_path):
    cfg = Config(**SMALL, drop="share_keys:0,1,2", out=str(tmp_path))
    with pytest.raises(Exception) as err:
        simulate(cfg)
    text = str(err.value) + str(err.value.__cause__ or "")
    assert "secure aggregation failed at stage" in text


def test_a_node_cannot_reply_in_another_clients_name():
    from fedkd.apps.secure import take_replies

    cfg = SecAggConfig()
    server = SecAggServer(cfg, b"s", [0, 1, 2, 3], 3)
    requests = server.start()
    replies = {i: SecAggClient(i, cfg, b"s").handle(requests[i]) for i in range(4)}
    uploaded, refused = dict.fromkeys(range(4), 0), []
    # node of client 0 forwards client 3's reply first; then every client's own reply arrives
    take_replies(server, [(0, replies[3])] + [(i, replies[i]) for i in range(4)], uploaded, refused)
    assert refused == [0]  # the forgery is refused; client 3's own reply was then accepted
    assert uploaded[3] > 0 and set(server.advance()) == {0, 1, 2, 3}


def test_refused_request_wipes_the_saved_secrets_and_vector():
    from fedkd.aggregate import secagg_config
    from fedkd.apps.secure import STATE_KEY, VECTOR_KEY, client_step, keep_vector, session_for
    from fedkd.secagg.messages import ShareKeysRequest

    config = Config(num_clients=3)
    sa_config = secagg_config(config, 10)
    session = session_for(7, 1)
    server = SecAggServer(sa_config, session, [0, 1, 2], 4)
    state = RecordDict()
    keep_vector(state, 0, np.zeros(4, np.float32))
    client_step(codec.encode(server.start()[0]), state, config, 0, 10, run_id=7)  # advertise keys: state saved
    assert STATE_KEY in state and VECTOR_KEY in state
    forged = ShareKeysRequest(b"other-session", 0, {}, {}, {}, {})
    with pytest.raises(ProtocolError):
        client_step(codec.encode(forged), state, config, 0, 10, run_id=7)
    assert STATE_KEY not in state and VECTOR_KEY not in state  # nothing left to retry against
    with pytest.raises(ProtocolError, match="no secure-aggregation session"):
        client_step(codec.encode(ShareKeysRequest(session, 0, {}, {}, {}, {})), state, config, 0, 10, run_id=7)


def test_non_finite_vector_is_refused_before_masking():
    from fedkd.apps.secure import keep_vector

    with pytest.raises(ValueError, match="client 2 produced 1 non-finite"):
        keep_vector(RecordDict(), 2, np.array([0.0, np.nan], np.float32))


def test_node_settings_put_the_operators_environment_beneath_node_config(monkeypatch):
    from fedkd.apps.secure import NODE_CONFIG_ENV, SecureAggregationError, node_pins, node_settings

    monkeypatch.delenv(NODE_CONFIG_ENV, raising=False)
    assert node_pins(node_settings({}), Config()).require_check  # a node requires the check by default
    monkeypatch.setenv(NODE_CONFIG_ENV, "secagg-require-check=false secagg-min-clients=5")
    settings = node_settings({"secagg-min-clients": 7, "partition-id": 0})
    assert settings["secagg-require-check"] == "false" and settings["secagg-min-clients"] == 7
    assert not node_pins(settings, Config()).require_check
    monkeypatch.setenv(NODE_CONFIG_ENV, "oops")
    with pytest.raises(SecureAggregationError, match="not key=value"):
        node_settings({})


def test_a_simulation_with_the_check_off_pins_its_nodes_to_match(tmp_path):
    """fedkd run's simulated nodes take their pins from the run's own settings (there is no
    --node-config in a simulation): turning the check off there is the operator's choice and the
    run completes without the stage. (The server's messages alone cannot relax a node's pins:
    tests/secagg/test_attacks.py.)"""
    cfg = Config(**dict(SMALL, num_clients=3, rounds=1), secagg_consistency_check=False, out=str(tmp_path))
    results = simulate(cfg)
    assert results["status"] == "completed"
    assert "consistency_check" not in results["rounds"][0]["secagg"]["seconds_per_stage"]


def test_simulate_leaves_no_node_settings_behind(monkeypatch):
    """The pins fedkd run sets for its simulated nodes are restored afterwards: a later node in the
    same process (or a deployment it starts) must not inherit a relaxed check."""
    import os

    import fedkd.simulation as cli
    from fedkd.apps.secure import NODE_CONFIG_ENV

    seen = {}

    def fake_run(config, on_round, verbose, observe_grid, on_phase=None, resume=None):
        seen["during"] = os.environ.get(NODE_CONFIG_ENV)
        raise RuntimeError("stop here")

    monkeypatch.setattr(cli, "_run_simulation", fake_run)
    monkeypatch.setattr(cli, "_run_inprocess",
                        lambda config, on_round, observe_grid, on_phase, resume=None: fake_run(config, 0, 0, 0))
    with pytest.raises(RuntimeError, match="stop here"):
        cli.simulate(Config(secagg_consistency_check=False))
    assert "secagg-require-check=false" in seen["during"]
    assert NODE_CONFIG_ENV not in os.environ


def test_node_pins_take_the_larger_minimum_and_refuse_bad_values_in_one_error():
    from fedkd.apps.secure import SecureAggregationError, node_pins

    assert node_pins({"secagg-min-clients": 5}, Config(secagg_min_clients=8)).min_clients == 8  # run raises it
    assert node_pins({"secagg-min-clients": 5}, Config(secagg_min_clients=3)).min_clients == 5  # never lowers it
    with pytest.raises(SecureAggregationError, match="minimums are invalid"):
        node_pins({"secagg-max-colluders": "two"}, Config())
