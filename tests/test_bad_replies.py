"""A misbehaving client (or node) costs the round that client, never the run: each bad reply is
that client's drop-out, named with its reason; and a teacher releases its predictions once."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict

from fedkd.apps import codec
from fedkd.apps.node import clients_of, entry_key
from fedkd.config import Config
from fedkd.simulation import simulate

SMALL = dict(num_clients=4, rounds=2, local_epochs=2, digest_epochs=0, distill_epochs=5, num_public=100)
VICTIM = 2


def _spoil(msg: Message, kind: str) -> Message:
    """`msg` (a node's train reply) with client VICTIM's entries spoilt as `kind` says."""
    if kind == "node error":
        return _like(msg, error=Error(code=0, reason="RuntimeError: the node crashed"))
    content = RecordDict(dict(msg.content.items()))
    if kind == "no metrics":
        del content[entry_key("metrics", VICTIM)]
    elif kind == "metrics without train-seconds":
        content[entry_key("metrics", VICTIM)] = MetricRecord({"partition-id": float(VICTIM)})
    elif kind == "metrics of the wrong kind":
        content[entry_key("metrics", VICTIM)] = ConfigRecord({"partition-id": "two"})
    elif kind == "short payload":
        content[entry_key("payload", VICTIM)] = ArrayRecord({"vector": Array(np.zeros(7, np.float32))})
    elif kind == "nan payload":
        vector = content[entry_key("payload", VICTIM)]["vector"].numpy().copy()
        vector[3] = np.nan
        content[entry_key("payload", VICTIM)] = ArrayRecord({"vector": Array(vector)})
    elif kind == "garbage keys":
        content[entry_key(codec.RECORD, VICTIM)] = ConfigRecord({"type": "AdvertiseKeysReply", "sender": 99})
    elif kind == "keys of the wrong kind":
        content[entry_key(codec.RECORD, VICTIM)] = MetricRecord({"x": 1.0})
    elif kind == "weights of another model":
        content[entry_key("arrays", VICTIM)] = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    return _like(msg, content)


def _like(reply: Message, content: RecordDict | None = None, error: Error | None = None) -> Message:
    """A reply with `reply`'s metadata and other content (or an error)."""
    m = reply.metadata
    meta = Metadata(run_id=m.run_id, message_id=m.message_id, src_node_id=m.src_node_id, dst_node_id=m.dst_node_id,
                    reply_to_message_id=m.reply_to_message_id, group_id=m.group_id, created_at=m.created_at,
                    ttl=m.ttl, message_type=m.message_type)
    return Message(content=content, metadata=meta) if error is None else Message(error=error, metadata=meta)


class Tap:
    """Wraps the server's Grid: every exchange's replies pass through `on(messages, replies)`."""

    def __init__(self, grid):
        self._grid = grid

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        return self.on(messages, list(self._grid.send_and_receive(messages, timeout=timeout)))

    def on(self, messages, replies):
        return replies

    def __getattr__(self, name):
        return getattr(self._grid, name)


class SpoilingGrid(Tap):
    """Spoils client VICTIM's train reply in round 1 as `kind` says."""

    def __init__(self, grid, kind):
        super().__init__(grid)
        self.kind = kind

    def on(self, messages, replies):
        hosts = {m.metadata.dst_node_id for m in messages
                 if m.metadata.message_type == "train" and m.metadata.group_id == "1" and VICTIM in clients_of(m.content)}
        return [_spoil(r, self.kind) if r.metadata.src_node_id in hosts else r for r in replies]


@pytest.mark.parametrize("aggregation, kind, why", [
    ("secagg", "node error", "its node failed: RuntimeError: the node crashed"),
    ("secagg", "no metrics", "malformed"),
    ("secagg", "metrics without train-seconds", "malformed"),
    ("plain", "metrics of the wrong kind", "malformed"),
    ("plain", "short payload", "sent 7 values"),
    ("plain", "nan payload", "non-finite"),
])
def test_a_bad_train_reply_is_that_clients_drop_out_and_is_named(tmp_path, aggregation, kind, why):
    # one client per node, so that the node error takes out only the victim
    cfg = Config(**SMALL, aggregation=aggregation, num_nodes=4, out=str(tmp_path))
    results = simulate(cfg, observe_grid=lambda g: SpoilingGrid(g, kind))
    assert results["status"] == "completed"
    first, second = results["rounds"]
    assert list(first["failed_clients"]) == [str(VICTIM)] and why in first["failed_clients"][str(VICTIM)]
    assert first["contributors"] == 3 and second["failed_clients"] is None and second["contributors"] == 4
    if aggregation == "secagg":
        assert first["secagg"]["dropped"] == {"advertise_keys": [VICTIM]}


@pytest.mark.parametrize("kind", ["garbage keys", "keys of the wrong kind"])
def test_bad_keys_are_refused_and_the_round_goes_on(tmp_path, kind):
    cfg = Config(**SMALL, num_nodes=2, out=str(tmp_path))
    results = simulate(cfg, observe_grid=lambda g: SpoilingGrid(g, kind))
    assert results["status"] == "completed"
    secagg = results["rounds"][0]["secagg"]
    assert secagg["refused"] == {"advertise_keys": [VICTIM]} and VICTIM not in secagg["survivors"]


def test_fedavg_leaves_out_weights_of_another_model(tmp_path):
    cfg = Config(**SMALL, method="fedavg", num_nodes=4, out=str(tmp_path))
    results = simulate(cfg, observe_grid=lambda g: SpoilingGrid(g, "weights of another model"))
    assert results["status"] == "completed"
    assert "another model" in results["rounds"][0]["failed_clients"][str(VICTIM)]


def test_a_run_whose_every_client_fails_stops_with_their_reason(tmp_path):
    from fedkd.apps.driver import RunError

    cfg = Config(**dict(SMALL, rounds=1), aggregation="plain", out=str(tmp_path))
    with pytest.raises(RunError, match="4 clients dropped: client 0: its reply is malformed.*no client is left"):
        simulate(cfg, observe_grid=EveryReplySpoilt)


class EveryReplySpoilt(Tap):
    """Every train reply loses its metrics."""

    def on(self, messages, replies):
        return [_like(r, RecordDict({k: v for k, v in r.content.items() if not k.startswith("metrics@")}))
                for r in replies]


# ---- a teacher releases once -------------------------------------------------------------------

REPLAY = dict(SMALL, local_epochs=0, digest_epochs=0, teacher_init="persist", aggregation="plain")


class Payloads(Tap):
    """Keeps each round's plain payloads by client."""

    def __init__(self, grid, seen):
        super().__init__(grid)
        self.seen = seen

    def on(self, messages, replies):
        from fedkd.apps.node import entries

        for r in replies:
            for pid, rec in entries(r.content, "payload").items():
                self.seen.setdefault(r.metadata.group_id, {})[pid] = rec["vector"].numpy()
        return replies


def test_a_teacher_releases_once_so_two_sums_cannot_be_differenced(tmp_path, monkeypatch):
    """The attack (independent review): settings under which training leaves every teacher as it
    was make each client release the same vector in two rounds, and with the victim in one cohort
    and not the other the difference of the two sums is its vector. The control, with the check
    off, shows the same vectors twice; with it on, the second release is refused."""
    import fedkd.apps.client_app as client_app
    from fedkd.apps.driver import RunError

    real = client_app._check_fresh
    monkeypatch.setattr(client_app, "_check_fresh", lambda own, pid, state: None)  # the defence off
    seen: dict = {}
    results = simulate(Config(**REPLAY, out=str(tmp_path / "off")), observe_grid=lambda g: Payloads(g, seen))
    assert results["status"] == "completed"
    assert all(np.array_equal(seen["1"][pid][:400], seen["2"][pid][:400]) for pid in range(4))  # public rows

    monkeypatch.setattr(client_app, "_check_fresh", real)
    seen.clear()
    with pytest.raises(RunError, match="refuses to release predictions of a teacher whose weights it has released"):
        simulate(Config(**REPLAY, out=str(tmp_path / "on")), observe_grid=lambda g: Payloads(g, seen))
    assert set(seen) == {"1"}  # round 1 released; in round 2 every client refused


def test_the_default_run_trains_anew_and_releases_every_round(tmp_path):
    """The check does not get in the way of real training: with local epochs every round's teacher
    is new (and with teacher-init persist too)."""
    for init in ("student", "persist"):
        results = simulate(Config(**dict(SMALL, rounds=3), teacher_init=init, out=str(tmp_path / init)))
        assert [r["failed_clients"] for r in results["rounds"]] == [None] * 3
