"""Conversions between fedkd's plain values and Flower records (arrays and scalars only, no pickle):
configs, vectors, the consensus, the student, and a client's `ClientMetrics` (hyphenated keys).

Also owns the node's config cache: every message carries the run's settings, and a node parses
and validates one set of them once (`config_from_message`). Imports no torch: a deployed node
starts a fresh process per message, and a secure-aggregation stage needs none of it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedkd.config import Config
from fedkd.rounds import ClientMetrics

if TYPE_CHECKING:
    from fedkd.task import Consensus

ROUND_KEY = "server-round"


def config_record(config: Config, server_round: int) -> ConfigRecord:
    return ConfigRecord({**config.to_run_config(), ROUND_KEY: server_round})


def config_from_message(msg: Message) -> tuple[Config, int]:
    """(the run's Config, the round) from a message's config record. The same settings give the
    same (frozen) Config without parsing them again; any changed value parses and validates anew."""
    values = dict(msg.content["config"])
    server_round = int(values.pop(ROUND_KEY))
    # the type is part of the key: True == 1 in Python, but not as a setting
    return _parsed(tuple(sorted((k, type(v).__name__, v) for k, v in values.items()))), server_round


@functools.lru_cache(maxsize=8)
def _parsed(settings: tuple[tuple[str, str, object], ...]) -> Config:
    return Config.from_run_config({k: v for k, _, v in settings})  # a ConfigError is raised, not cached


def metrics_record(partition_id: int, metrics: ClientMetrics) -> MetricRecord:
    """A train reply's "metrics": which client it is ("partition-id") and its figures, hyphenated."""
    return MetricRecord({"partition-id": float(partition_id), **metrics.to_wire()})


def vector_record(vector: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"vector": Array(np.ascontiguousarray(vector, dtype=np.float32))})


def consensus_record(consensus: Consensus) -> ArrayRecord:
    return ArrayRecord({
        "indices": Array(consensus.indices.astype(np.int64)),
        "values": Array(consensus.teacher.values),
        # kind and temperature travel as arrays so the record stays arrays-only
        "is-logits": Array(np.array([consensus.teacher.kind == "logits"])),
        "temperature": Array(np.array([consensus.teacher.temperature], dtype=np.float64)),
    })


def consensus_from_message(msg: Message) -> Consensus | None:
    from fedkd.distill import Teacher  # torch: only a train message needs it
    from fedkd.task import Consensus

    if "consensus" not in msg.content:
        return None
    rec = msg.content["consensus"]
    teacher = Teacher(
        values=rec["values"].numpy(),
        kind="logits" if bool(rec["is-logits"].numpy()[0]) else "probs",
        temperature=float(rec["temperature"].numpy()[0]),
    )
    return Consensus(rec["indices"].numpy(), teacher)


PROTOTYPE_PREFIX = "student-"  # + an architecture name: that architecture's global student


def train_content(config: Config, server_round: int, consensus: Consensus | None,
                  student: dict | None = None, prototypes: Mapping[str, dict] | None = None) -> RecordDict:
    """A round's train message: the config, last round's consensus (for the digest step) and,
    with teacher-init student, the global student's weights and each other architecture's global
    student (`prototypes`, architecture-students), all download only: nothing flows back."""
    content = RecordDict({"config": config_record(config, server_round)})
    if consensus is not None and config.digest_epochs > 0:
        content["consensus"] = consensus_record(consensus)
    if config.teacher_init == "student":  # round 1 too: a shared start, as in FedAvg
        if student is not None:
            content["student"] = ArrayRecord(student)
        for name, state in (prototypes or {}).items():
            content[PROTOTYPE_PREFIX + name] = ArrayRecord(state)
    return content


def student_from_message(msg: Message) -> dict | None:
    return msg.content["student"].to_torch_state_dict() if "student" in msg.content else None


def prototypes_from_message(msg: Message) -> dict[str, dict]:
    """Architecture name -> that architecture's global student, as `train_content` sent them."""
    return {key[len(PROTOTYPE_PREFIX):]: record.to_torch_state_dict()
            for key, record in msg.content.array_records.items() if key.startswith(PROTOTYPE_PREFIX)}
