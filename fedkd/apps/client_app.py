"""fedkd's ClientApp: a node hosts one or more clients (`fedkd.apps.node`); each message names the
clients it is for, and the node answers for each in turn: read the round's config, call one
function of `fedkd.task` (or `fedkd.apps.secure` for a secure-aggregation stage; the first stage's
request comes with the train message and is answered after training), wrap the reply entry.

Each client keeps its own slice of the node's `context.state` (`ClientState`): its teacher's
weights only where the next round needs them (teacher-init persist, or a teacher no global
student fits; with teacher-init student, the default, none), its DP-SGD accounting history, its
secure-aggregation state. The number of classes of the node's data is kept node-wide: the
secure-aggregation stages need it. A client that fails answers with a `failed` entry naming why;
the others on the node go on.

torch and the data are imported in `train` only: a deployed SuperNode starts a fresh process for
every message, and a secure-aggregation stage needs neither (about 3 s of imports and 5 s of
loading the splits saved per stage and node on this machine).
"""

from __future__ import annotations

import time
from logging import ERROR

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from fedkd.apps import codec
from fedkd.apps.node import (
    FAILED, TIMING, ClientState, clients_record, entry_key, failed_record, hosted_clients, requested,
)
from fedkd.apps.records import (
    config_from_message, consensus_from_message, metrics_record, prototypes_from_message, student_from_message,
    vector_record,
)
from fedkd.apps.secure import keep_vector, keys_with_training, stage_step
from fedkd.apps.teachers import TeacherStore, node_folder
from fedkd.rounds import ClientMetrics

CLASSES_KEY = "num-classes"  # context.state: classes of this node's data, kept for the secagg stages
RELEASED = "released"  # a client's state: digests of the teacher weights whose predictions it released

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    import torch

    from fedkd.task import ClientStart, cohort_fedavg, cohort_teachers

    config, server_round = config_from_message(msg)
    ids = requested(msg.content, hosted_clients(context.node_config, config.num_clients))
    torch.set_num_threads(max(1, int(config.client_cpus)))  # one actor per core share, no oversubscription
    reply = RecordDict()
    if config.method == "fedavg":
        done = cohort_fedavg(config, server_round, ids, msg.content["arrays"].to_torch_state_dict())
        for pid, result in done.items():
            if isinstance(result, Exception):
                reply[entry_key(FAILED, pid)] = failed_record(_reason(result))
                continue
            reply[entry_key("arrays", pid)] = ArrayRecord(result[0])
            reply[entry_key("metrics", pid)] = MetricRecord(result[1])
        return Message(reply, reply_to=msg)

    own = {pid: ClientState(context.state, pid) for pid in ids}  # each client's slice of the node's state
    kept = teacher_store(config, context)
    starts = {pid: ClientStart(kept.get(pid), dp_history_from_state(own[pid])) for pid in ids}
    # decoded once per message and shared by the node's clients (each copies what it loads)
    updates = cohort_teachers(config, server_round, starts, consensus=consensus_from_message(msg),
                              student=student_from_message(msg), prototypes=prototypes_from_message(msg),
                              with_predictions=config.method == "fd")
    for pid, update in updates.items():
        try:
            if isinstance(update, Exception):
                raise update
            entries = _reply_of(msg, context, config, server_round, pid, own[pid], update, kept)
        except Exception as exc:  # this client's failure is its own: the node's other clients go on
            entries = {entry_key(FAILED, pid): failed_record(_reason(exc))}
        for key, record in entries.items():
            reply[key] = record
    return Message(reply, reply_to=msg)


def _reply_of(msg: Message, context: Context, config, server_round: int, pid: int, own: ClientState,
              update, kept: TeacherStore) -> dict:
    """One client's train reply entries from its update; keeps on the node what the client needs
    next (its teacher where the next round starts from it, its DP-SGD history, its vector held for
    the secure sum, the digests of what it released)."""
    from fedkd.task import splits_for

    if update.from_student:  # it will start from a global student again: nothing of it stays on the node
        kept.drop(pid)
    else:  # in memory within teacher-memory, else on the node's disk
        kept.put(pid, update.state)
    if update.dp_history:  # DP-SGD steps so far: each round's epsilon composes with the earlier ones
        own["teacher-dp"] = ConfigRecord({
            "noise": [e[0] for e in update.dp_history], "rate": [e[1] for e in update.dp_history],
            "steps": [e[2] for e in update.dp_history]})
    out, metrics = {}, dict(update.metrics)
    released = _check_fresh(own, pid, update.state) if config.method == "fd" else None
    if config.method == "fd" and config.aggregation == "secagg":
        t0 = time.perf_counter()
        keep_vector(own, pid, update.vector)  # leaves the node only masked, in the secagg stages
        num_classes = splits_for(config).num_classes
        context.state[CLASSES_KEY] = ConfigRecord({"num-classes": num_classes})
        request = entry_key(codec.RECORD, pid)
        if request in msg.content:  # the round's advertise-keys request came with training: keys go back now
            keys = keys_with_training(RecordDict({codec.RECORD: msg.content[request]}), own, config, pid,
                                      num_classes, server_round, run_id=context.run_id,
                                      node_config=context.node_config)
            if keys is not None:  # None: refused (logged); the server counts a drop-out
                out[request] = keys
        metrics["secagg-seconds"] = time.perf_counter() - t0
    elif config.method == "fd":
        out[entry_key("payload", pid)] = vector_record(update.vector)
    if released is not None:  # this teacher's predictions are out (or committed to a session): never again
        own[RELEASED] = released
    # task's hyphenated metrics, checked into ClientMetrics here at the Flower boundary
    out[entry_key("metrics", pid)] = metrics_record(pid, ClientMetrics.from_wire(metrics))
    return out


def teacher_store(config, context: Context) -> TeacherStore:
    """The node's kept teachers: `teacher-memory` MiB in its state, the rest under `teacher-dir`."""
    return TeacherStore(context.state, int(config.teacher_memory * 2**20),
                        lambda: node_folder(config.teacher_dir, str(context.node_id)))


def _check_fresh(own, pid: int, state: dict) -> ConfigRecord:
    """A teacher releases once: refuse to release predictions of weights this client has released
    before (the same vector in two sessions would let a server difference two sums down to it:
    `local-epochs 0` with teacher-init persist, or a server sending one student twice). Returns
    the record of released weights with these added, to keep once the release is made."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):  # (the teacher's weights, in name order) -> 32 bytes
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    seen = list(own[RELEASED]["digests"]) if RELEASED in own else []
    if digest.hexdigest() in seen:
        raise RuntimeError(f"client {pid} refuses to release predictions of a teacher whose weights it has "
                           f"released before (a teacher releases once: train it anew each round, local-epochs > 0)")
    return ConfigRecord({"digests": [*seen, digest.hexdigest()]})


def dp_history_from_state(state) -> tuple:
    if "teacher-dp" not in state:
        return ()
    rec = state["teacher-dp"]
    return tuple(zip(map(float, rec["noise"]), map(float, rec["rate"]), map(int, rec["steps"])))


@app.query("roll_call")
def roll_call(msg: Message, context: Context) -> Message:
    """The server's one question before round 1: which clients (partitions) this node hosts."""
    config, _ = config_from_message(msg)
    hosted = hosted_clients(context.node_config, config.num_clients)
    return Message(RecordDict({"clients": clients_record(hosted)}), reply_to=msg)


@app.query("secagg")
def secagg(msg: Message, context: Context) -> Message:
    """One secure-aggregation stage for each client the message names, each with its own state."""
    config, server_round = config_from_message(msg)
    ids = requested(msg.content, hosted_clients(context.node_config, config.num_clients))
    num_classes = _num_classes(config, context.state)
    reply = RecordDict()
    t0 = time.perf_counter()
    for pid in ids:
        key = entry_key(codec.RECORD, pid)
        try:
            if key not in msg.content:
                raise ValueError(f"client {pid}: the message carries no request for it")
            answer = stage_step(RecordDict({codec.RECORD: msg.content[key]}), ClientState(context.state, pid), config,
                                pid, num_classes, server_round, run_id=context.run_id,
                                node_config=context.node_config)
            reply[key] = answer[codec.RECORD]
        except Exception as exc:  # refused or dropped: this client is out of the session, the others go on
            log(ERROR, "%s", _reason(exc), exc_info=exc)  # the console shows its line, run.log the traceback
            reply[entry_key(FAILED, pid)] = failed_record(_reason(exc))
    reply[TIMING] = MetricRecord({"secagg-seconds": time.perf_counter() - t0})  # its clients' protocol work
    return Message(reply, reply_to=msg)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _num_classes(config, state: RecordDict) -> int:
    """What the train message left in the node's state; else (no training yet) from the data."""
    if CLASSES_KEY in state:
        return int(state[CLASSES_KEY]["num-classes"])
    from fedkd.task import splits_for

    return splits_for(config).num_classes
