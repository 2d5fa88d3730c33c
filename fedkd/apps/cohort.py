"""Which nodes take part in a round when `clients-per-round` samples a cohort.

Owns: the roll call (one small `query.roll_call` message to every node, once per run, whose reply
names the node's partition id) and turning a round's cohort of partition ids into Flower node ids;
`CohortFedAvg`, Flower's FedAvg sending each round only to the same cohort. Must not touch: the
sampling rule (`fedkd.task.sample_cohort`, a function of the seed and the round) or the maths.

Why a roll call: Flower gives nodes random ids, so a cohort drawn over sorted node ids would
differ between runs with one seed. The cohort is drawn over partition ids instead, and the server
learns which node holds which partition id before round 1 (the same id every train reply carries;
an fd or local train reply naming another id stops the run). Secure rounds need it too: each client's train
message carries its own advertise-keys request. So do runs with architecture students: each client is sent only
the model its teacher starts from (`fedkd.task.starting_weights`), which depends on its architecture.
"""

from __future__ import annotations

from typing import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedkd.config import Config
from fedkd.task import sample_cohort

ROLL_CALL = f"{MessageType.QUERY}.roll_call"


class CohortError(RuntimeError):
    """The nodes' partition ids do not cover 0..num-clients-1 once each; the message says how."""


def roll_call(grid: Grid, nodes: list[int], config: Config) -> dict[int, int]:
    """Partition id -> node id for every node, asked once; a missing, failed or duplicate answer
    stops the run (a cohort must be able to name any client)."""
    messages = [Message(RecordDict(), node, ROLL_CALL) for node in nodes]
    node_of: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=config.timeout):
        if reply.has_error():
            raise CohortError(f"node {reply.metadata.src_node_id} failed the roll call: {reply.error.reason}")
        pid = int(reply.content["metrics"]["partition-id"])
        if pid in node_of:
            raise CohortError(f"nodes {node_of[pid]} and {reply.metadata.src_node_id} both claim partition-id {pid}")
        node_of[pid] = reply.metadata.src_node_id
    missing = sorted(set(range(config.num_clients)) - set(node_of))
    if missing:
        raise CohortError(f"no node answered the roll call for partition ids {missing[:10]}"
                          f"{' ...' if len(missing) > 10 else ''} within timeout={config.timeout}s")
    return node_of


class Cohorts:
    """Each round's cohort as (partition ids, node ids). Without sampling, and without `by_partition`,
    every node is asked and no roll call is made (the partition ids then come back in the train
    replies). `by_partition`: rounds whose train messages differ per client, so the server must know
    each node's partition id first: secure fd rounds (per-client key requests,
    `fedkd.apps.secure.SecureRound`) and architecture students (per-architecture start weights)."""

    def __init__(self, grid: Grid, nodes: list[int], config: Config, by_partition: bool = False):
        self.config, self.nodes = config, list(nodes)
        self.node_of = roll_call(grid, nodes, config) if config.clients_per_round or by_partition else None

    def of_round(self, server_round: int) -> tuple[tuple[int, ...], list[int]]:
        cohort = sample_cohort(self.config, server_round)
        if self.node_of is None:
            return cohort, self.nodes
        return cohort, [self.node_of[pid] for pid in cohort]


class CohortFedAvg(FedAvg):
    """Flower's FedAvg (fraction-train 1) with each round's messages kept for the cohort's nodes
    only, so the fedavg baseline samples exactly the clients fd does."""

    def __init__(self, cohorts: Cohorts, **kwargs):
        super().__init__(**kwargs)
        self.cohorts = cohorts

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        chosen = set(self.cohorts.of_round(server_round)[1])
        return [m for m in super().configure_train(server_round, arrays, config, grid)
                if m.metadata.dst_node_id in chosen]
