"""Secure aggregation over Flower: the server drives `fedkd.secagg`'s state machines and gets back
only the sum. The first stage's requests (advertise keys) ride in the round's train messages and
the keys come back in the train replies; every later stage is one `query.secagg` exchange.

Owns: the session id
both sides derive from (run id, round), the node's pinned minimums (`node_pins`), the stage loop on
the server (`SecureRound`), and the client's handler bodies (`keys_with_training` after training,
`stage_step` for a later stage, both through `client_step`), which keep its protocol state and pending vector in the node's
`context.state` between stages.
Must not touch: protocol maths (`fedkd.secagg`), distillation, files.

What the client does not take from the server: the session id (it derives it from the run id
Flower gives the node and the round, refuses a round it has already started or passed, and runs
one session per vector it trained: a second session needs a new training round), and its
minimums (`node_pins`: the SuperNode's --node-config keys, or its FEDKD_NODE_CONFIG environment
variable, `secagg-min-clients`,
`secagg-max-colluders`, `secagg-require-check`; where a key is absent, the node's own default,
which the run's fedkd settings, carried in the server's messages, may tighten but never relax). Roster mode, from --node-config only: `secagg-identity-key` (this node's
Ed25519 private key, 64 hex digits) and `secagg-roster` ("<partition id>:<public key hex>,..." for
every enrolled node); then keys relayed without a valid identity signature, and ids outside the
roster, are refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedkd.aggregate import Aggregate, SecureAggregationError, check_contribution, secagg_config
from fedkd.apps import codec
from fedkd.apps.node import CLIENTS, TIMING, clients_record, entries, entry_key
from fedkd.apps.records import config_record
from fedkd.config import Config
from fedkd.secagg import UNMASK, Pins, ProtocolError, RoundFailed, SecAggClient, SecAggServer
from fedkd.secagg.messages import AdvertiseKeysRequest, MaskedInputRequest

SECAGG_MESSAGE = f"{MessageType.QUERY}.secagg"
VECTOR_KEY = "secagg-vector"  # context.state: this round's vector, waiting for the masked-input stage
STATE_KEY = "secagg-client"  # context.state: the protocol client's saved state (private keys: node only)
ROUND_KEY = "secagg-round"  # context.state: the last round this node started a session for
CLAIM_KEY = "secagg-vector-claimed"  # context.state: the round whose session the held vector is committed to


def session_for(run_id: int, server_round: int) -> bytes:
    """The session id of one round: both sides derive it; a client never takes it from a request."""
    return f"fedkd/run-{run_id}/round-{server_round}".encode()


NODE_CONFIG_ENV = "FEDKD_NODE_CONFIG"  # "key=value key=value", beneath the SuperNode's --node-config


def node_settings(node_config: Mapping[str, object]) -> dict[str, object]:
    """The node operator's own settings: the SuperNode's --node-config over the `FEDKD_NODE_CONFIG`
    environment variable of the node's process. Both belong to whoever runs the node, not to the
    server. Flower's simulation gives its nodes no --node-config of their own, so `fedkd run` puts
    its operator's settings (the pins) into that variable before Ray starts the simulated nodes."""
    from_env: dict[str, object] = {}
    for item in os.environ.get(NODE_CONFIG_ENV, "").split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SecureAggregationError(f"{NODE_CONFIG_ENV}: '{item}' is not key=value")
        from_env[key] = value
    return {**from_env, **node_config}


def node_pins(node_config: Mapping[str, object], config: Config) -> Pins:
    """The minimums this node holds any session to. A key in --node-config wins; where it is absent
    the node's default holds: at least 3 clients, the default number of colluders for the session's
    size (2 for n >= 10), the consistency check required. The run's fedkd settings arrive in the
    server's messages, so they may tighten these (a larger `secagg-min-clients`) but never relax them:
    relaxing takes the node operator's own `--node-config`."""
    def flag(value: object) -> bool:
        return value.strip().lower() in ("1", "true", "yes") if isinstance(value, str) else bool(value)

    try:
        # the run may raise the node's minimum (never lower it); the node's own value, or 3, is the floor
        min_clients = max(int(node_config.get("secagg-min-clients", 3)), config.secagg_min_clients)
        colluders = int(node_config.get("secagg-max-colluders", -1))
        check = flag(node_config.get("secagg-require-check", True))
        return Pins(min_clients=min_clients, max_colluders=None if colluders < 0 else colluders, require_check=check)
    except ValueError as exc:
        raise SecureAggregationError(f"this node's secure-aggregation minimums are invalid: {exc}") from None


def fixed_point_sum(config: Config, num_classes: int):
    """The aggregator of `--aggregation plain`: the same fixed-point encoding and decoding as the
    secure sum, without masks, so the two give bit-identical sums and differ only in who sees what."""
    codec = secagg_config(config, num_classes).fixed_point  # plain runs have no DP: no round dependence

    def aggregate(vectors) -> Aggregate:
        ids = sorted(vectors)
        if not ids:
            raise SecureAggregationError("no client contributed a vector this round")
        length = len(vectors[ids[0]])
        total = np.zeros(length, dtype=np.uint64)  # exact: n * max_code < 2^bit_width <= 2^64
        for cid in ids:
            check_contribution(cid, vectors[cid], length)
            total += codec.encode(np.asarray(vectors[cid], dtype=np.float32))[0].astype(np.uint64)
        return Aggregate(total=codec.decode(total, len(ids)), count=len(ids), contributors=tuple(ids))

    return aggregate


def node_roster(node_config: Mapping[str, object]) -> tuple[dict[int, bytes] | None, bytes | None]:
    """(roster, identity key) from --node-config; (None, None) when roster mode is not set up."""
    try:
        key = node_config.get("secagg-identity-key")
        identity = bytes.fromhex(str(key)) if key else None
        text = node_config.get("secagg-roster")
        roster = None
        if text:
            roster = {}
            for item in str(text).split(","):
                cid, _, pk = item.strip().partition(":")
                roster[int(cid)] = bytes.fromhex(pk)
        if identity is not None and len(identity) != 32 or roster and any(len(v) != 32 for v in roster.values()):
            raise ValueError("keys must be 32 bytes (64 hex digits)")
    except ValueError as exc:
        raise SecureAggregationError(f"this node's roster settings are invalid: {exc}") from None
    return roster, identity


# ---- server ----------------------------------------------------------------------------------

class SecureRound:
    """One round's secure sum over the cohort `nodes` (client id -> node id), opened before the
    round's training so that each client's advertise-keys request rides in its train message and
    its keys come back in the train reply: one exchange fewer per round (issue 14). The stages
    after it run as `query.secagg` exchanges in `finish`, one message per node carrying an entry
    for each of its clients (`fedkd.apps.node`): every client keeps its own state machine, and the
    server's view of each client is the same whatever the grouping.

    The client answers the request only after training, with the vector already held
    (`keys_with_training`), with the checks `client_step` applies to every request (session id,
    round not yet started, parameters, pins); a train reply without keys is a drop-out at
    advertise_keys."""

    def __init__(self, run_id: int, nodes: Mapping[int, int], dim: int, config: Config, num_classes: int,
                 server_round: int):
        self.config, self.round, self.nodes = config, server_round, dict(nodes)
        self.sa_config = secagg_config(config, num_classes, server_round)
        try:
            self.server = SecAggServer(self.sa_config, session_for(run_id, server_round), sorted(nodes), dim)
        except ValueError as exc:
            raise SecureAggregationError(f"secure aggregation cannot start: {exc}") from None
        self.requests = self.server.start()  # client id -> AdvertiseKeysRequest

    def request(self, client_id: int) -> ConfigRecord:
        """Client `client_id`'s advertise-keys request, to ride in its node's train message."""
        return codec.encode(self.requests[client_id])[codec.RECORD]

    def finish(self, grid: Grid, keys: Mapping[int, ConfigRecord], keys_seconds: float = 0.0,
               on_stage=None) -> Aggregate:
        """Take the keys that came back with training (client id -> its record; a client without
        one is a drop-out at advertise_keys), run the remaining stages, return the sum.
        `keys_seconds`: the clients' own time making them (their metrics), for the record;
        `on_stage(name)` is told each stage as it starts."""
        started = time.perf_counter()
        self.client_seconds, self.on_stage = keys_seconds, on_stage
        taken, malformed = [], []
        for cid in sorted(keys):
            if cid not in self.nodes:
                continue
            try:
                if not isinstance(keys[cid], ConfigRecord):
                    raise ProtocolError(f"client {cid}'s keys are not a config record")
                taken.append((cid, codec.decode(RecordDict({codec.RECORD: keys[cid]}))))
            except ProtocolError:
                malformed.append(cid)
        return self._run(grid, taken, malformed, started)

    def _run(self, grid: Grid, keys: list[tuple[int, object]], malformed: list[int], started: float) -> Aggregate:
        server, config, server_round = self.server, self.config, self.round
        uploaded = dict.fromkeys(self.nodes, 0)  # client id -> bytes it sent in protocol replies
        refused: dict[str, list[int]] = {}
        wall: dict[str, float] = {}
        try:
            # the keys are the first stage's replies (its requests went with training): its wall is
            # the server's time to take them in and close the stage
            stage, t0 = server.stage, time.perf_counter()
            refused[stage] = sorted(malformed)
            take_replies(server, keys, uploaded, refused[stage])
            requests = server.advance()
            wall[stage] = time.perf_counter() - t0
            while True:  # every later stage: one query.secagg exchange
                stage, t0 = server.stage, time.perf_counter()
                if self.on_stage is not None:
                    self.on_stage(stage)
                replies, malformed, seconds = _exchange(grid, requests, self.nodes, config, server_round)
                self.client_seconds += seconds
                refused[stage] = list(malformed)
                take_replies(server, replies, uploaded, refused[stage])
                if stage == UNMASK:
                    result = server.finish()
                    wall[stage] = time.perf_counter() - t0
                    break
                requests = server.advance()
                wall[stage] = time.perf_counter() - t0
        except RoundFailed as exc:
            raise SecureAggregationError(f"round {server_round}: secure aggregation failed at stage '{exc.stage}': {exc}") from None
        except ProtocolError as exc:
            raise SecureAggregationError(f"round {server_round}: secure aggregation aborted: {exc}") from None
        details = {
            "survivors": list(result.survivors),
            "dropped": {stage: list(ids) for stage, ids in result.dropped.items() if ids},
            "refused": {stage: ids for stage, ids in refused.items() if ids},
            "clipped": int(result.clipped),
            "upload_bytes_per_client": float(np.mean([uploaded[c] for c in result.survivors])),
            "seconds_per_stage": {stage: round(s, 4) for stage, s in wall.items()},
            "seconds_total": time.perf_counter() - started,  # after training: the keys' intake, then the stages
            "server_compute_seconds": {stage: round(s, 4) for stage, s in result.seconds_per_stage.items()},
            "client_compute_seconds": round(self.client_seconds, 4),
            "neighbors": server.neighbors,
            "threshold": server.threshold,
            "clip": self.sa_config.clip,
            "error_bound": result.count / (2 * self.sa_config.scale),
        }
        return Aggregate(total=result.sum, count=result.count, contributors=tuple(result.survivors), details=details)


def take_replies(server: SecAggServer, replies: list[tuple[int, object]], uploaded: dict[int, int],
                 refused: list[int]) -> None:
    """Feed one stage's (client id, reply) pairs to the server. A reply that breaks the protocol,
    or that a node sends in another client's name, is refused and its client treated as dropped
    (logged with the reason); the round goes on without it."""
    for client_id, reply in replies:
        try:
            if getattr(reply, "sender", None) != client_id:
                raise ProtocolError(f"the node of client {client_id} replied as client {getattr(reply, 'sender', None)}")
            server.receive(reply)
            uploaded[client_id] += sum(len(v) for v in _bytes_of(reply))
        except ProtocolError as exc:
            refused.append(client_id)
            log(WARNING, "fedkd: secure aggregation refused client %s's reply at stage '%s': %s", client_id,
                server.stage, exc)


def _exchange(grid: Grid, requests: dict[int, object], nodes: dict[int, int], config: Config,
              server_round: int) -> tuple[list[tuple[int, object]], list[int], float]:
    """Send each request to its client's node, one message per node with an entry per client;
    return (client id, decoded reply) for the clients that answered in time with a well-formed
    reply, the ids whose reply was malformed, and the nodes' own time on the stage (as reported). A client that failed (its node's error reply, or
    a `failed` entry) or did not answer in time is a drop-out."""
    by_node: dict[int, list[int]] = {}
    for client_id in requests:
        by_node.setdefault(nodes[client_id], []).append(client_id)
    messages, asked = [], {}
    for node, ids in by_node.items():
        content = RecordDict({"config": config_record(config, server_round), CLIENTS: clients_record(ids)})
        for client_id in ids:
            content[entry_key(codec.RECORD, client_id)] = codec.encode(requests[client_id])[codec.RECORD]
        messages.append(Message(content, node, SECAGG_MESSAGE, group_id=str(server_round)))
        asked[node] = set(ids)
    out, malformed, seconds = [], [], 0.0
    for reply in grid.send_and_receive(messages, timeout=config.secagg_timeout):
        ids = asked.get(reply.metadata.src_node_id, set())
        if reply.has_error():
            continue
        timing = reply.content.get(TIMING)
        if isinstance(timing, MetricRecord) and isinstance(timing.get("secagg-seconds"), float):
            seconds += max(0.0, timing["secagg-seconds"])
        for client_id, record in entries(reply.content, codec.RECORD).items():
            if client_id not in ids:
                continue  # an entry for a client not asked of this node: nobody's answer
            try:
                if not isinstance(record, ConfigRecord):
                    raise ProtocolError(f"client {client_id}'s reply is not a config record")
                out.append((client_id, codec.decode(RecordDict({codec.RECORD: record}))))
            except ProtocolError as exc:
                malformed.append(client_id)
                log(WARNING, "fedkd: secure aggregation refused client %s's malformed reply: %s", client_id, exc)
    return sorted(out, key=lambda pair: pair[0]), sorted(malformed), seconds


def _bytes_of(reply: object) -> Iterable[bytes]:
    for value in vars(reply).values():
        if isinstance(value, bytes):
            yield value
        elif isinstance(value, dict):
            yield from (v for v in value.values() if isinstance(v, bytes))


# ---- client ----------------------------------------------------------------------------------

def keep_vector(state: RecordDict, client_id: int, vector: np.ndarray) -> None:
    """Hold this round's vector in the node's state until the masked-input stage asks for it."""
    check_contribution(client_id, vector)  # NaN/inf stop the run here, naming the client
    # float64 stays float64: DP vectors hold integers that float32 would round above 2^24
    dtype = np.float64 if vector.dtype == np.float64 else np.float32
    state[VECTOR_KEY] = ArrayRecord({"vector": Array(np.ascontiguousarray(vector, dtype=dtype))})
    if CLAIM_KEY in state:  # a fresh vector: one new session may use it
        del state[CLAIM_KEY]


def client_step(content: RecordDict, state: RecordDict, config: Config, client_id: int, num_classes: int,
                server_round: int = 1, *, run_id: int, node_config: Mapping[str, object] | None = None,
                alone: bool = False) -> RecordDict:
    """Answer one protocol request (`content`), keeping the client between stages in the node's
    `state`; raises on a refused request (Flower then sends an error reply). `run_id` is the run
    Flower says this node is in (not the server's word); `node_config` is the SuperNode's own.
    `alone`: the request came as a message of its own, not with training; an advertise-keys
    request is then refused."""
    try:
        reply = _client_step(content, state, config, client_id, num_classes, server_round, run_id, node_config or {},
                             alone)
    except (ProtocolError, RoundFailed):
        # the client has refused and wiped itself: its saved secrets and vector go too, so a
        # server cannot retry the stage against the old state
        for key in (STATE_KEY, VECTOR_KEY, CLAIM_KEY):
            if key in state:
                del state[key]
        raise
    return reply


def stage_step(content: RecordDict, state: RecordDict, config: Config, client_id: int, num_classes: int,
               server_round: int = 1, *, run_id: int, node_config: Mapping[str, object] | None = None
               ) -> RecordDict:
    """A `query.secagg` request: any stage after advertise_keys, through `client_step`. An
    advertise-keys request sent alone is refused (and what the node held wiped): a session opens
    only with the training that produced its vector (`keys_with_training`)."""
    return client_step(content, state, config, client_id, num_classes, server_round, run_id=run_id,
                       node_config=node_config, alone=True)


def keys_with_training(content: RecordDict, state: RecordDict, config: Config, client_id: int, num_classes: int,
                       server_round: int, *, run_id: int, node_config: Mapping[str, object] | None = None
                       ) -> ConfigRecord | None:
    """Answer the advertise-keys request that came in a train message (`SecureRound`), after
    training, with this round's vector already held (`keep_vector`). Only that request is taken
    there, with the checks `client_step` applies to every request (session id, round not yet
    started, parameters, pins). The record goes into the
    train reply; None when the client refuses, its node's own settings are invalid, or (config
    `drop`) it drops out at that stage: the reply then carries no keys and the server counts the
    client a drop-out at advertise_keys. A refusal is logged here, on the node, and wipes what the
    node held for the round (its vector and any session state)."""
    request = RecordDict({codec.RECORD: content[codec.RECORD]})
    try:
        if not isinstance(codec.decode(request), AdvertiseKeysRequest):
            raise ProtocolError(f"client {client_id}: a train message may carry only an advertise-keys request")
        return client_step(request, state, config, client_id, num_classes, server_round, run_id=run_id,
                           node_config=node_config)[codec.RECORD]
    except (ProtocolError, RoundFailed, SimulatedDropout, SecureAggregationError) as exc:
        # SecureAggregationError: this node's own settings are invalid (pins, roster); sent alone,
        # the request would have got an error reply, which the server also counts as a drop-out
        for key in (STATE_KEY, VECTOR_KEY, CLAIM_KEY):  # as client_step does on a refusal
            if key in state:
                del state[key]
        log(WARNING, "fedkd: %s", exc)
        return None


class SimulatedDropout(RuntimeError):
    """A client leaving at a stage that config `drop` names (experiments)."""


def _client_step(content, state, config, client_id, num_classes, server_round, run_id, node_config, alone):
    request = codec.decode(content)
    if alone and isinstance(request, AdvertiseKeysRequest):
        raise ProtocolError(f"client {client_id}: an advertise-keys request comes only with a train message")
    stage = type(request).__name__
    for dropped_stage, ids in config.drop_plan.items():
        if client_id in ids and stage.lower().startswith(dropped_stage.replace("_", "")):
            raise SimulatedDropout(f"client {client_id}: simulated drop-out at stage '{dropped_stage}' (config 'drop')")
    sa_config = secagg_config(config, num_classes, server_round)
    node_config = node_settings(node_config)
    pins = node_pins(node_config, config)
    roster, identity = node_roster(node_config)
    session = session_for(run_id, server_round)
    if request.session_id != session:
        raise ProtocolError(f"client {client_id}: request for session {request.session_id!r}; run {run_id}, "
                            f"round {server_round} is {session!r}")
    if isinstance(request, AdvertiseKeysRequest):
        last = int(state[ROUND_KEY]["round"]) if ROUND_KEY in state else 0
        if server_round <= last:
            raise ProtocolError(f"client {client_id} already started a session for round {last}; "
                                f"refusing another for round {server_round}")
        state[ROUND_KEY] = ConfigRecord({"round": server_round})
        # One session per trained vector: the server picks the round number (and with it the ring
        # placement), but each further try costs it a training exchange with every client.
        if VECTOR_KEY not in state:
            raise ProtocolError(f"client {client_id} holds no vector for round {server_round}")
        if CLAIM_KEY in state:
            raise ProtocolError(f"client {client_id}'s vector is committed to the session of round "
                                f"{int(state[CLAIM_KEY]['round'])}; a new session needs a new training round")
        state[CLAIM_KEY] = ConfigRecord({"round": server_round})
        client = SecAggClient(client_id, sa_config, session, pins=pins, roster=roster, identity_key=identity)
    elif STATE_KEY in state:
        try:
            client = SecAggClient.from_state(codec.unpack_state(state[STATE_KEY]["state"]), sa_config, pins=pins,
                                             roster=roster, identity_key=identity)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"client {client_id} cannot resume its session: {exc}") from None
    else:
        raise ProtocolError(f"client {client_id} has no secure-aggregation session for {stage}")
    vector = None
    if isinstance(request, MaskedInputRequest):
        if VECTOR_KEY not in state:
            raise ProtocolError(f"client {client_id} holds no vector for this round")
        vector = state[VECTOR_KEY]["vector"].numpy()
    reply = client.handle(request, vector)
    if vector is not None:
        del state[VECTOR_KEY]  # masked and sent: nothing in the clear stays behind
    if client.state in ("done", "failed"):
        if STATE_KEY in state:
            del state[STATE_KEY]
    else:
        state[STATE_KEY] = ConfigRecord({"state": codec.pack_state(client.to_state())})
    return codec.encode(reply)
