"""Which node hosts which client, and each round's cohort grouped by node.

Owns: the roll call (one small `query.roll_call` message to every node, once per run, whose reply
lists the partition ids the node hosts, `fedkd.apps.node.hosted_clients`) and turning a round's
cohort of partition ids into one group of clients per node (`Placement`). Must not touch: the
sampling rule (`fedkd.task.sample_cohort`, a function of the seed and the round) or the maths.

Why a roll call: Flower gives nodes random ids, so the server learns which node holds which
partition ids before round 1; a cohort is drawn over partition ids, so one seed gives the same
cohorts whatever the node ids and however the clients are spread over nodes. Every message after
it names its clients, and a reply entry for a client the roll call did not tie to that node is
nobody's answer.
"""

from __future__ import annotations

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedkd.apps.node import CLIENTS
from fedkd.apps.records import config_record
from fedkd.config import Config
from fedkd.task import sample_cohort

ROLL_CALL = f"{MessageType.QUERY}.roll_call"


class CohortError(RuntimeError):
    """The nodes' partition ids do not cover 0..num-clients-1 once each; the message says how."""


def roll_call(grid: Grid, nodes: list[int], config: Config) -> dict[int, int]:
    """Partition id -> node id for every client, asked once; a missing, failed or overlapping
    answer stops the run (a cohort must be able to name any client)."""
    messages = [Message(RecordDict({"config": config_record(config, 0)}), node, ROLL_CALL) for node in nodes]
    node_of: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=config.timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise CohortError(f"node {node} failed the roll call: {reply.error.reason}")
        try:
            ids = [int(i) for i in reply.content[CLIENTS]["ids"]]
        except (KeyError, TypeError, ValueError):
            raise CohortError(f"node {node} answered the roll call without its list of clients") from None
        for pid in ids:
            if pid in node_of:
                raise CohortError(f"nodes {node_of[pid]} and {node} both claim partition-id {pid}")
            node_of[pid] = node
    missing = sorted(set(range(config.num_clients)) - set(node_of))
    if missing:
        raise CohortError(f"no node answered the roll call for partition ids {missing[:10]}"
                          f"{' ...' if len(missing) > 10 else ''} within timeout={config.timeout}s")
    return node_of


class Placement:
    """The run's placement of clients on nodes (from the roll call) and each round's cohort,
    grouped by node."""

    def __init__(self, grid: Grid, nodes: list[int], config: Config):
        self.config = config
        self.node_of = roll_call(grid, nodes, config)  # partition id -> node id

    def of_round(self, server_round: int) -> tuple[tuple[int, ...], dict[int, list[int]]]:
        """(the round's cohort, node id -> its clients in the cohort, ascending)."""
        cohort = sample_cohort(self.config, server_round)
        by_node: dict[int, list[int]] = {}
        for pid in cohort:
            by_node.setdefault(self.node_of[pid], []).append(pid)
        return cohort, by_node
