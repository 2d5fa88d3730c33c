"""The round engine: the one round loop of fedkd, whatever drives the Grid (`fedkd run`'s
in-process engine, Flower's Ray simulation, `flwr run`, `fedkd deploy`). One train exchange per
round (and, with secure aggregation, its remaining stages: `fedkd.apps.secure.SecureRound`),
then the core.

Owns: waiting for nodes (saying what it waits for), sending each round's train messages (one per
node, with an entry for each of its clients in the round's cohort: `fedkd.apps.cohort`,
`fedkd.apps.node`), turning the reply entries into `ClientReply`s (fd, local) or FedAvg's weighted
mean (fedavg), timing each round, and handing records (and what the run resolved, and why it
stopped early, and the student and the server's state after each round) to the `RunRecorder`;
resuming a stopped run from that state (`server_state`, `restore_server`) and knowing when a run
cannot be resumed because its nodes keep state between rounds (`node_state_reason`). Must not
touch: the maths (`fedkd.server`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from logging import INFO

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedkd import distill
from fedkd.aggregate import ContributionError, check_contribution
from fedkd.apps import codec
from fedkd.apps.cohort import Placement
from fedkd.apps.node import CLIENTS, FAILED, clients_record, entries, entry_key
from fedkd.apps.records import config_record, train_content
from fedkd.apps.secure import SecureRound, fixed_point_sum
from fedkd.config import Config
from fedkd.data import Splits
from fedkd.models import resolve
from fedkd.results import RunRecorder, dropped_text, resolved_settings
from fedkd.rounds import ClientMetrics, RoundRecord
from fedkd.secagg import UNMASK
from fedkd.server import ClientReply, DistillationServer, PrivacyBudgetError
from fedkd.task import Consensus, dp_params, prototype_architectures, starting_weights, vector_layout


class RunError(RuntimeError):
    """The run cannot go on; the message says why in one line."""


def run_federation(grid: Grid | None, config: Config, recorder: RunRecorder) -> dict:
    """Run every round of `config.method`, saving after each; returns the results dict.

    `grid` may be None for `central`, which needs no clients. With `recorder.resumed` (a stopped
    run's checkpoint) the server starts from its saved state and the rounds go on after its last.
    """
    recorder.start()
    try:
        server = DistillationServer(config)
        recorder.describe(resolved_settings(config, server.splits))
        if config.method == "fd" and config.aggregation == "plain":  # secagg's fixed-point sum, unmasked
            server.aggregate = fixed_point_sum(config, server.splits.num_classes)
        first = 1
        if recorder.resumed is not None:
            restore_server(server, recorder.resumed.server)
            first = recorder.resumed.round + 1
            opened = recorder.resumed.opened
            if opened is not None and server.ledger is not None:  # released, never recorded: spent all the same
                params = dp_params(config, server.splits.num_classes, opened)
                server.ledger.record(params, params.min_honest)  # the fewest honest the noise allows: the most spent
                recorder.spend(server.privacy_spent())
        if config.method == "central":
            for r in range(first, config.rounds + 1):
                t0 = time.perf_counter()
                recorder.phase(f"round {r}: training centrally")
                record = server.central_round(r)
                recorder.add_round(replace(record, seconds=time.perf_counter() - t0))
                recorder.save_student(server.student.state_dict())
                recorder.save_checkpoint(r, server_state(server))
        else:
            _run_rounds(grid, config, server, recorder, first)
        return recorder.finish(recorder.elapsed())
    except Exception as exc:
        recorder.fail(f"{type(exc).__name__}: {exc}")
        raise


def server_state(server: DistillationServer) -> dict:
    """Everything of the server that one round hands the next, copied (distillation changes the
    models in place): the student, the per-architecture students, the consensus sent down next,
    the DP ledger. Tensors, numbers and strings only (checkpoint.pt loads without pickle). Every
    draw a round makes comes from a generator seeded by (seed, round), so no RNG state is kept."""
    consensus, ledger = server.consensus, server.ledger
    return {
        "student": _copy(server.student.state_dict()),
        "prototypes": {name: _copy(state) for name, state in server.prototype_states().items()},
        "consensus": None if consensus is None else {
            "indices": torch.from_numpy(np.array(consensus.indices, dtype=np.int64)),  # (m,)
            "values": torch.from_numpy(np.array(consensus.teacher.values)),  # (m, K)
            "kind": consensus.teacher.kind, "temperature": float(consensus.teacher.temperature)},
        "ledger": None if ledger is None else {"rdp": torch.from_numpy(np.array(ledger.rdp, dtype=np.float64)),
                                               "honest": [int(h) for h in ledger.honest]},
    }


def restore_server(server: DistillationServer, state: dict) -> None:
    """Put `server_state`'s record back into a freshly built server of the same config."""
    server.student.load_state_dict(state["student"])
    if set(state["prototypes"]) != set(server.prototypes):
        raise RunError(f"the checkpoint has architecture students {sorted(state['prototypes'])}, this run "
                       f"{sorted(server.prototypes)}")
    for name, weights in state["prototypes"].items():
        server.prototypes[name].load_state_dict(weights)
    saved = state["consensus"]
    if saved is not None:
        teacher = distill.Teacher(saved["values"].numpy(), saved["kind"], saved["temperature"])
        server.consensus = Consensus(saved["indices"].numpy(), teacher)
    if (state["ledger"] is None) != (server.ledger is None):
        raise RunError("the checkpoint's privacy ledger does not fit this run's DP settings")
    if server.ledger is not None:
        server.ledger.rdp = state["ledger"]["rdp"].numpy().copy()
        server.ledger.honest = list(state["ledger"]["honest"])


def _copy(weights: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in weights.items()}


def node_state_reason(config: Config, splits: Splits) -> str | None:
    """Why a stopped run of `config` cannot be resumed, or None when it can: its nodes keep state
    between rounds (`fedkd.apps.client_app`), which lives in the nodes' memory and is not saved,
    so a resumed run would start them afresh and no longer be the run it continues. With
    teacher-init student (the default) every teacher starts each round from a global student, and
    nodes keep nothing that changes what they send (only a record of the weights they released,
    which starts empty again)."""
    if config.method in ("fedavg", "central"):
        return None
    if config.teacher_dp_enabled:
        return ("DP-SGD teachers (teacher-dp-noise-multiplier > 0) keep their privacy accounting on their nodes, "
                "which is not saved: a resumed run would count their epsilon from zero")
    if config.teacher_init != "student":
        return f"teacher-init {config.teacher_init} keeps each teacher on its node between rounds, which is not saved"
    global_students = {resolve(config.student_model, splits.input_shape), *prototype_architectures(config, splits)}
    own = sorted({resolve(config.teacher_model_for(i), splits.input_shape) for i in range(config.num_clients)}
                 - global_students)
    if own:
        return (f"{', '.join(own)} teachers have no global student to start from (architecture-students off, or "
                f"method {config.method}), so they stay on their nodes between rounds, which is not saved")
    return None


def expected_nodes(config: Config) -> int:
    """How many nodes the run waits for: `num-nodes`, or with 0 (auto) one per client."""
    return config.num_nodes or config.num_clients


def wait_for_nodes(grid: Grid, config: Config, poll: float = 0.5, report_every: float = 30.0) -> list[int]:
    """All `expected_nodes` nodes, waiting up to `timeout` seconds for them to connect. While it
    waits it logs what it waits for at once, then every `report_every` seconds."""
    want = expected_nodes(config)
    started = time.monotonic()
    deadline, next_report = started + config.timeout, started
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= want:
            if len(nodes) > want:
                raise RunError(
                    f"{len(nodes)} nodes are connected but the run expects {want} (num-nodes={config.num_nodes}, "
                    f"num-clients={config.num_clients}); set num-nodes (or, with one client per node, "
                    "num-clients) to the number of SuperNodes"
                )
            return nodes
        now = time.monotonic()
        if now > deadline:
            raise RunError(f"only {len(nodes)} of the {want} nodes the run expects connected within {config.timeout}s")
        if now >= next_report:
            log(INFO, "fedkd: waiting for %d nodes, %d connected (%.0f s of timeout=%gs); with num-nodes 0 "
                "num-clients must equal the number of SuperNodes (num-supernodes of a simulation)", want, len(nodes),
                now - started, config.timeout)
            next_report = now + report_every
        time.sleep(poll)


def _run_rounds(grid: Grid, config: Config, server: DistillationServer, recorder: RunRecorder,
                first: int = 1) -> None:
    """The round loop of every method with clients (fd, local, fedavg), on every engine: each
    round's cohort gets one train message per node, with an entry per client
    (`fedkd.apps.node`), and the replies come back as one entry per client.

    A PrivacyBudgetError stops the run cleanly (`recorder.stop`): the rounds so far stand, and the
    privacy spent is recorded even when the round is refused. With secure aggregation the round's
    sum is opened before training (`SecureRound`): each client's entry carries its advertise-keys
    request, and the keys come back with training. The session is sized for the whole cohort, so a
    client whose train reply does not come back in time, or cannot be used (`_collect`), is a
    drop-out at advertise_keys; a round goes on while the secure sum's drop-out budget holds, and
    records who was dropped in training and why (`failed_clients`). The rounds run from `first`
    (after 1, a resumed run's), each ending with its checkpoint (`server_state`)."""
    secure = config.method == "fd" and config.aggregation == "secagg"
    placement = Placement(grid, wait_for_nodes(grid, config), config)
    for r in range(first, config.rounds + 1):
        try:
            server.check_budget(r)
        except PrivacyBudgetError as exc:  # a clean stop: the rounds so far stand
            recorder.stop(exc.status, str(exc))
            return
        t0 = time.perf_counter()
        cohort, by_node = placement.of_round(r)  # only the cohort trains and joins this round's secure sum
        session = None
        if secure:
            layout = vector_layout(config, server.splits, r)
            session = SecureRound(grid.run.run_id, {pid: placement.node_of[pid] for pid in cohort}, layout.length,
                                  config, layout.classes, r)
        messages = [Message(_node_content(config, server, r, ids, session), node, MessageType.TRAIN,
                            group_id=str(r)) for node, ids in by_node.items()]
        recorder.phase(f"round {r}: {len(cohort)} client{'s' if len(cohort) > 1 else ''} training")
        got, failed = _collect(grid.send_and_receive(messages, timeout=config.timeout), by_node, r, config, server)
        seconds_clients = time.perf_counter() - t0
        dropped = {str(pid): reason for pid, reason in sorted(failed.items())} or None
        if not got:
            if dropped:
                raise RunError(f"{dropped_text(RoundRecord(round=r, failed_clients=dropped), show=1)}; no client is left")
            raise RunError(f"round {r}: no client replied within timeout={config.timeout}s")
        if config.method == "fedavg":
            record = server.fedavg_record(r, fedavg_mean(got), seconds_clients=seconds_clients)
            work = sum(e["metrics"].train_seconds for e in got.values())
            recorder.add_round(replace(record, seconds=time.perf_counter() - t0, cohort=tuple(cohort),
                                       client_work_seconds=work, failed_clients=dropped))
            recorder.save_student(server.student.state_dict())
            recorder.save_checkpoint(r, server_state(server))
            continue
        replies = [ClientReply(pid, e.get("payload", np.zeros(0, np.float32)), e["metrics"])
                   for pid, e in sorted(got.items())]
        aggregate = None
        if session is not None:
            aggregate = session.finish(grid, {pid: e["keys"] for pid, e in got.items() if "keys" in e},
                                       keys_seconds=sum(e["metrics"].secagg_seconds or 0.0 for e in got.values()),
                                       on_stage=_stage_reporter(recorder, r, server))
        if config.method == "fd":
            recorder.phase(f"round {r}: distilling the student")
        try:
            record = server.finish_round(r, replies, seconds_clients=seconds_clients, aggregate=aggregate)
        except PrivacyBudgetError as exc:  # too few survivors: the sum is discarded, the run stops cleanly
            recorder.stop(exc.status, str(exc))
            return
        finally:
            if server.ledger is not None:  # spent privacy is recorded even when the round is refused
                recorder.spend(server.privacy_spent())
        recorder.add_round(replace(record, seconds=time.perf_counter() - t0, cohort=tuple(cohort),
                                   failed_clients=dropped))
        if config.method != "local":  # local trains teachers only: there is no student to save
            recorder.save_student(server.student.state_dict())
        recorder.save_checkpoint(r, server_state(server))


def _stage_reporter(recorder: RunRecorder, server_round: int, server: DistillationServer):
    """What the secure sum tells as each stage starts: the progress line, and under distributed DP,
    before the unmask stage opens the noisy sum, a note in the checkpoint that this round's release
    may be spent (`RunRecorder.note_opened`) even if the run stops before the round is saved."""
    def on_stage(stage: str) -> None:
        if stage == UNMASK and server.ledger is not None:
            recorder.note_opened(server_round)
        recorder.phase(f"round {server_round}: secure sum, {stage}")

    return on_stage


def _node_content(config: Config, server: DistillationServer, server_round: int, ids: list[int],
                  session: SecureRound | None) -> RecordDict:
    """One node's train message: what its clients share (the config, the consensus, the start
    each of them needs: the student, or with architecture students its architecture's own,
    `task.starting_weights`, so a node downloads only what its clients start from), the list of
    its clients, and each client's advertise-keys request."""
    if config.method == "fedavg":
        content = RecordDict({"config": config_record(config, server_round),
                              "arrays": ArrayRecord(server.student.state_dict())})
    else:
        student, prototypes = server.student.state_dict(), server.prototype_states()
        needs_student, own = False, {}
        for pid in ids:
            start, theirs = starting_weights(config, server.splits, pid, student, prototypes)
            needs_student |= start is not None
            own.update(theirs)
        content = train_content(config, server_round, server.consensus, student=student if needs_student else None,
                                prototypes=own)
    content[CLIENTS] = clients_record(ids)
    if session is not None:
        for pid in ids:
            content[entry_key(codec.RECORD, pid)] = session.request(pid)
    return content


def _collect(replies: list[Message], by_node: dict[int, list[int]], server_round: int, config: Config,
             server: DistillationServer) -> tuple[dict[int, dict], dict[int, str]]:
    """(client id -> {"metrics": ClientMetrics, and "payload" (plain fd), "keys" (secure fd) or
    "arrays" (fedavg)}, client id -> why its reply cannot be used), from each node's reply.

    A bad reply is its client's drop-out, never the run's end: the client's own `failed` entry,
    its node's error reply, missing or malformed metrics, a payload or weights of the wrong shape
    or not finite. An entry a node sends for a client the roll call did not tie to it is nobody's
    answer and is ignored. A node that did not answer in time leaves its clients out."""
    out: dict[int, dict] = {}
    failed: dict[int, str] = {}
    in_clear = config.method == "fd" and config.aggregation == "plain"
    length = vector_layout(config, server.splits, server_round).length if in_clear else None
    reference = server.student.state_dict() if config.method == "fedavg" else None
    for msg in replies:
        asked = sorted(by_node.get(msg.metadata.src_node_id, ()))
        if msg.has_error():
            for pid in asked:
                failed[pid] = f"its node failed: {last_line(msg.error.reason)}"
            continue
        content = msg.content
        own_failures = entries(content, FAILED)
        for pid in asked:
            if pid in own_failures:
                failed[pid] = last_line(str(own_failures[pid].get("reason")))
                continue
            try:
                out[pid] = _entry(content, pid, length, reference)
            except (KeyError, TypeError, ValueError, AttributeError, ContributionError) as exc:
                failed[pid] = f"its reply is malformed: {exc}"
    return out, failed


def _entry(content: RecordDict, pid: int, length: int | None, reference: dict | None) -> dict:
    """One client's checked reply entries (raises on a malformed one)."""
    metrics = content.get(entry_key("metrics", pid))
    if not isinstance(metrics, MetricRecord):
        raise ValueError("no metrics")
    entry: dict = {"metrics": ClientMetrics.from_wire(metrics)}
    if length is not None:
        vector = content[entry_key("payload", pid)]["vector"].numpy()
        check_contribution(pid, vector, length)
        entry["payload"] = vector
    if reference is not None:
        state = content[entry_key("arrays", pid)].to_torch_state_dict()
        if state.keys() != reference.keys() or any(state[k].shape != reference[k].shape for k in state):
            raise ValueError("weights of another model")
        if not all(bool(v.isfinite().all()) for v in state.values() if v.is_floating_point()):
            raise ValueError("weights that are not finite")
        entry["arrays"] = state
    keys = content.get(entry_key(codec.RECORD, pid))
    if keys is not None:
        entry["keys"] = keys
    return entry


def fedavg_mean(entries: dict[int, dict]) -> dict:
    """FedAvg's weighted mean of the clients' weights by their number of examples (McMahan et al.,
    2017), in float64 over clients in partition-id order: the same result whatever the grouping."""
    ids = sorted(entries)
    sizes = np.array([entries[pid]["metrics"].num_examples for pid in ids], dtype=np.float64)
    weights = sizes / sizes.sum()
    first = entries[ids[0]]["arrays"]
    mean = {}
    for key, value in first.items():
        total = sum(w * entries[pid]["arrays"][key].double() for w, pid in zip(weights, ids))
        mean[key] = total.to(value.dtype) if value.is_floating_point() else total.round().to(value.dtype)
    return mean


def last_line(reason: str | None) -> str:
    """The informative end of a client's error (Ray wraps it in a long traceback)."""
    lines = [ln.strip() for ln in (reason or "unknown error").strip().splitlines() if ln.strip()]
    last = lines[-1].rstrip("'>") if lines else "unknown error"
    # Flower's wrapper of an exception raised in a ClientApp adds nothing a user needs
    _, found, message = last.partition("Exception ClientAppException occurred. Message: ")
    return message if found and message else last
