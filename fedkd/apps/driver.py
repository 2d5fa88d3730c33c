"""The federation loop on the server: one train exchange per round (and, with secure aggregation,
its remaining stages: `fedkd.apps.secure.SecureRound`), then the core.

Owns: waiting for nodes (saying what it waits for), sending each round's train messages (to the
round's cohort, `fedkd.apps.cohort`) and
turning replies into `ClientReply`s, running the `fedavg` baseline through Flower's own FedAvg
strategy, timing each round, and handing records (and what the run resolved, and why it stopped
early) to the `RunRecorder`. Must not touch: the maths (`fedkd.server`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedkd.apps.cohort import CohortFedAvg, Cohorts
from fedkd.apps.records import metrics_from_message, partition_from_message, train_content, vector_from_message
from fedkd.apps.secure import SecureRound, fixed_point_sum
from fedkd.config import Config
from fedkd.results import RunRecorder, resolved_settings
from fedkd.server import ClientReply, DistillationServer, PrivacyBudgetError
from fedkd.task import starting_weights, vector_layout


class RunError(RuntimeError):
    """The run cannot go on; the message says why in one line."""


def run_federation(grid: Grid | None, config: Config, recorder: RunRecorder) -> dict:
    """Run every round of `config.method`, saving after each; returns the results dict.

    `grid` may be None for `central`, which needs no clients.
    """
    started = time.perf_counter()
    recorder.start()
    try:
        server = DistillationServer(config)
        recorder.describe(resolved_settings(config, server.splits))
        if config.method == "fd" and config.aggregation == "plain":  # secagg's fixed-point sum, unmasked
            server.aggregate = fixed_point_sum(config, server.splits.num_classes)
        if config.method == "central":
            for r in range(1, config.rounds + 1):
                t0 = time.perf_counter()
                record = server.central_round(r)
                recorder.add_round(replace(record, seconds=time.perf_counter() - t0))
        elif config.method == "fedavg":
            _run_fedavg(grid, config, server, recorder)
        else:
            _run_rounds(grid, config, server, recorder)
        return recorder.finish(time.perf_counter() - started)
    except Exception as exc:
        recorder.fail(f"{type(exc).__name__}: {exc}")
        raise


def wait_for_nodes(grid: Grid, config: Config, poll: float = 0.5, report_every: float = 30.0) -> list[int]:
    """All `num-clients` nodes, waiting up to `timeout` seconds for them to connect. While it
    waits it logs what it waits for at once, then every `report_every` seconds."""
    started = time.monotonic()
    deadline, next_report = started + config.timeout, started
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= config.num_clients:
            if len(nodes) > config.num_clients:
                raise RunError(
                    f"{len(nodes)} nodes are connected but num-clients={config.num_clients}; "
                    "set num-clients to the number of SuperNodes"
                )
            return nodes
        now = time.monotonic()
        if now > deadline:
            raise RunError(f"only {len(nodes)} of num-clients={config.num_clients} nodes connected within {config.timeout}s")
        if now >= next_report:
            log(INFO, "fedkd: waiting for %d nodes, %d connected (%.0f s of timeout=%gs); num-clients must equal "
                "the number of SuperNodes (num-supernodes of a simulation)", config.num_clients, len(nodes),
                now - started, config.timeout)
            next_report = now + report_every
        time.sleep(poll)


def _run_rounds(grid: Grid, config: Config, server: DistillationServer, recorder: RunRecorder) -> None:
    """fd and local rounds. A PrivacyBudgetError stops the run cleanly (`recorder.stop`): the
    rounds so far stand, and the privacy spent is recorded even when the round is refused.
    With secure aggregation the round's sum is opened before training (`SecureRound`): each train
    message carries its client's advertise-keys request, and the keys come back with training. The
    session is sized for the whole cohort, so a client whose train reply does not come back in time
    is a drop-out at advertise_keys and uses up the session's drop-out tolerance (before, the
    session was opened over the clients that had replied)."""
    secure = config.method == "fd" and config.aggregation == "secagg"
    # with architecture students each client gets only its own architecture's start
    # (`task.starting_weights`), so the server must know each node's partition id, as for secagg
    per_architecture = bool(server.prototypes)
    cohorts = Cohorts(grid, wait_for_nodes(grid, config), config, by_partition=secure or per_architecture)
    for r in range(1, config.rounds + 1):
        try:
            server.check_budget(r)
        except PrivacyBudgetError as exc:  # a clean stop: the rounds so far stand
            recorder.stop(exc.status, str(exc))
            return
        t0 = time.perf_counter()
        cohort, nodes = cohorts.of_round(r)  # only the cohort trains and joins this round's secure sum
        contents = _train_contents(config, server, r, cohort)
        if cohorts.node_of is None and len({id(c) for c in contents.values()}) > 1:
            # without a roll call the pairing of partition ids and nodes below is arbitrary
            raise RunError("per-client train content needs the roll call (Cohorts by_partition)")
        session = None
        if secure:
            layout = vector_layout(config, server.splits, r)
            session = SecureRound(grid.run.run_id, dict(zip(cohort, nodes)), layout.length, config, layout.classes, r)
        messages = [Message(contents[pid] if session is None else session.with_keys(contents[pid], pid), node,
                            MessageType.TRAIN, group_id=str(r)) for pid, node in zip(cohort, nodes)]
        raw = list(grid.send_and_receive(messages, timeout=config.timeout))
        replies = _collect(raw, r, config)
        seconds_clients = time.perf_counter() - t0
        if cohorts.node_of is not None:  # the roll call tied each node to a client: replies must agree
            _check_claims(raw, cohorts.node_of, r)
        aggregate = session.finish(grid, raw) if session is not None else None
        try:
            record = server.finish_round(r, replies, seconds_clients=seconds_clients, aggregate=aggregate)
        except PrivacyBudgetError as exc:  # too few survivors: the sum is discarded, the run stops cleanly
            recorder.stop(exc.status, str(exc))
            return
        finally:
            if server.ledger is not None:  # spent privacy is recorded even when the round is refused
                recorder.spend(server.privacy_spent())
        recorder.add_round(replace(record, seconds=time.perf_counter() - t0, cohort=tuple(cohort)))


def _train_contents(config: Config, server: DistillationServer, server_round: int,
                    cohort: tuple[int, ...]) -> dict[int, RecordDict]:
    """Partition id -> the round's train message content, one content per start: the student's,
    or with architecture students each architecture's own (`task.starting_weights`), so a client
    downloads only the weights it starts from. Without them every client gets the same content."""
    student, prototypes = server.student.state_dict(), server.prototype_states()
    made: dict[str, RecordDict] = {}
    contents = {}
    for pid in cohort:
        start, own = starting_weights(config, server.splits, pid, student, prototypes)
        key = next(iter(own), "")  # "": the student's start
        if key not in made:
            made[key] = train_content(config, server_round, server.consensus, student=start, prototypes=own)
        contents[pid] = made[key]
    return contents


def _check_claims(replies: list[Message], node_of: dict[int, int], server_round: int) -> None:
    """A train reply must name the partition id its node gave at the roll call: keys are asked of,
    and counted for, the client id the roll call tied to the node."""
    for msg in replies:  # error replies have already stopped the run (_collect)
        pid = partition_from_message(msg)
        if node_of.get(pid) != msg.metadata.src_node_id:
            raise RunError(f"round {server_round}: node {msg.metadata.src_node_id} replied as partition-id {pid}, "
                           f"which the roll call tied to node {node_of.get(pid)}")


def _collect(replies: list[Message], server_round: int, config: Config) -> list[ClientReply]:
    out = []
    for msg in replies:
        if msg.has_error():
            raise RunError(f"round {server_round}: a client failed: {last_line(msg.error.reason)}")
        in_clear = config.method == "fd" and config.aggregation == "plain"
        vector = vector_from_message(msg) if in_clear else np.zeros(0, np.float32)
        out.append(ClientReply(partition_from_message(msg), vector, metrics_from_message(msg)))
    if not out:
        raise RunError(f"round {server_round}: no client replied within timeout={config.timeout}s")
    return sorted(out, key=lambda reply: reply.partition_id)


def last_line(reason: str | None) -> str:
    """The informative end of a client's error (Ray wraps it in a long traceback)."""
    lines = [ln.strip() for ln in (reason or "unknown error").strip().splitlines() if ln.strip()]
    last = lines[-1].rstrip("'>") if lines else "unknown error"
    # Flower's wrapper of an exception raised in a ClientApp adds nothing a user needs
    _, found, message = last.partition("Exception ClientAppException occurred. Message: ")
    return message if found and message else last


def _run_fedavg(grid: Grid, config: Config, server: DistillationServer, recorder: RunRecorder) -> None:
    nodes = wait_for_nodes(grid, config)
    strategy = CohortFedAvg(
        Cohorts(grid, nodes, config), fraction_train=1.0, fraction_evaluate=0.0,
        min_train_nodes=len(nodes), min_available_nodes=len(nodes),
    )
    last = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord):
        if server_round == 0:  # FedAvg evaluates the initial model too; fedkd records rounds 1..R
            last[0] = time.perf_counter()
            return None
        now = time.perf_counter()
        record = server.fedavg_record(server_round, arrays.to_torch_state_dict(), seconds_clients=now - last[0])
        recorder.add_round(replace(record, seconds=time.perf_counter() - last[0],
                                   cohort=tuple(strategy.cohorts.of_round(server_round)[0])))
        last[0] = time.perf_counter()
        return None

    config_record = ConfigRecord(config.to_run_config())
    strategy.start(
        grid=grid, initial_arrays=ArrayRecord(server.student.state_dict()), num_rounds=config.rounds,
        timeout=config.timeout, train_config=config_record, evaluate_fn=evaluate,
    )
