"""fedkd's ClientApp: read the round's config from the message, call one function of
`fedkd.task` (or `fedkd.apps.secure` for a secure-aggregation stage; the first stage's request
comes with the train message and is answered after training), wrap the reply. The
teacher's weights (and, with DP-SGD teachers, their accounting history) are kept in the node's
`context.state` between rounds, and so is the number of classes of the node's data, which the
secure-aggregation stages need; with teacher-init student (the default) a teacher starts each
round instead from the student the server sends down, or, of another architecture, from that
architecture's student (architecture-students).

torch and the data are imported in `train` only: a deployed SuperNode starts a fresh process for
every message, and a secure-aggregation stage needs neither (about 3 s of imports and 5 s of
loading the splits saved per stage and node on this machine).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedkd.apps.records import (
    config_from_message, consensus_from_message, metrics_record, prototypes_from_message, student_from_message,
    vector_record,
)
from fedkd.apps import codec
from fedkd.apps.secure import keep_vector, keys_with_training, stage_step
from fedkd.rounds import ClientMetrics

CLASSES_KEY = "num-classes"  # context.state: classes of this node's data, kept for the secagg stages

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    import torch

    from fedkd.task import fedavg_round, splits_for, teacher_round

    config, server_round = config_from_message(msg)
    partition_id = int(context.node_config["partition-id"])
    torch.set_num_threads(max(1, int(config.client_cpus)))  # one actor per core share, no oversubscription

    if config.method == "fedavg":
        state, metrics = fedavg_round(config, partition_id, server_round, msg.content["arrays"].to_torch_state_dict())
        return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)}), reply_to=msg)

    previous = context.state["teacher"].to_torch_state_dict() if "teacher" in context.state else None
    update = teacher_round(
        config, partition_id, server_round, previous,
        consensus=consensus_from_message(msg), with_predictions=config.method == "fd",
        dp_history=dp_history_from_state(context.state), student=student_from_message(msg),
        prototypes=prototypes_from_message(msg),
    )
    context.state["teacher"] = ArrayRecord(update.state)
    if update.dp_history:  # DP-SGD steps so far: each round's epsilon composes with the earlier ones
        context.state["teacher-dp"] = ConfigRecord({
            "noise": [e[0] for e in update.dp_history], "rate": [e[1] for e in update.dp_history],
            "steps": [e[2] for e in update.dp_history]})
    # task's hyphenated metrics, checked into ClientMetrics here at the Flower boundary
    content = RecordDict({"metrics": metrics_record(partition_id, ClientMetrics.from_wire(update.metrics))})
    if config.method == "fd" and config.aggregation == "secagg":
        keep_vector(context.state, partition_id, update.vector)  # leaves the node only masked, in the secagg stages
        num_classes = splits_for(config).num_classes
        context.state[CLASSES_KEY] = ConfigRecord({"num-classes": num_classes})
        if codec.RECORD in msg.content:  # the round's advertise-keys request came with training: keys go back now
            keys = keys_with_training(msg.content, context.state, config, partition_id, num_classes, server_round,
                                      run_id=context.run_id, node_config=context.node_config)
            if keys is not None:  # None: refused (logged); the server counts a drop-out
                content[codec.RECORD] = keys
    elif config.method == "fd":
        content["payload"] = vector_record(update.vector)
    return Message(content, reply_to=msg)


def dp_history_from_state(state: RecordDict) -> tuple:
    if "teacher-dp" not in state:
        return ()
    rec = state["teacher-dp"]
    return tuple(zip(map(float, rec["noise"]), map(float, rec["rate"]), map(int, rec["steps"])))


@app.query("roll_call")
def roll_call(msg: Message, context: Context) -> Message:
    """The server's one question before sampled rounds: which client (partition) is this node."""
    partition_id = int(context.node_config["partition-id"])
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": float(partition_id)})}), reply_to=msg)


@app.query("secagg")
def secagg(msg: Message, context: Context) -> Message:
    config, server_round = config_from_message(msg)
    partition_id = int(context.node_config["partition-id"])
    num_classes = _num_classes(config, context.state)
    reply = stage_step(msg.content, context.state, config, partition_id, num_classes, server_round,
                        run_id=context.run_id, node_config=context.node_config)
    return Message(reply, reply_to=msg)


def _num_classes(config, state: RecordDict) -> int:
    """What the train message left in the node's state; else (no training yet) from the data."""
    if CLASSES_KEY in state:
        return int(state[CLASSES_KEY]["num-classes"])
    from fedkd.task import splits_for

    return splits_for(config).num_classes
