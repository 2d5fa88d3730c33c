"""Typed records of a round: what a client reports (`ClientMetrics`), what the server records
(`RoundRecord`, with `SecAggStats`, `PrivacyStats` and `TeacherEpsilon` where they apply) and the
privacy a run has spent (`PrivacySpent`).

Owns: these records and their two serialised forms. `to_json()` gives results.json's keys,
in results.json's order (a round row has every key, null where a part does not apply, as files
written before these records had); `ClientMetrics.to_wire()` gives the hyphenated keys a
Flower MetricRecord carries. Records are read by attribute (a round's figures by name, checked by
the type, not by a string key); `PrivacyStats` can also be read by key, as the block it writes.
results.json's rows are the files' JSON; `fedkd.results.records_of` turns them back into records.
Must not touch: torch, Flower or files (`fedkd.apps.records` packs messages, `fedkd.results`
writes files).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Iterator


class _Record:
    """A dataclass record whose JSON form is its fields, in order (nested dicts and lists as they are)."""

    def to_json(self) -> dict:
        return asdict(self)


class _Row(_Record, Mapping):
    """Read-only access by key to `to_json()` (the block a record writes), for a block that is
    handed on as the JSON it is (`PrivacyStats`: `privacy["epsilon"]`, `set(privacy)`)."""

    def __getitem__(self, key: str) -> object:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


# ---- what a client reports ---------------------------------------------------------------------

@dataclass(frozen=True)
class ClientMetrics:
    """One client's report on its round (figures about its work, never its data). On the wire
    each field travels under its hyphenated name ("train-seconds"); absent ones are not sent."""

    train_seconds: float  # digest step and local training, wall time
    predict_seconds: float = 0.0  # predictions on the public (and test) inputs, and DP encoding
    train_recoveries: int = 0  # restarts at half the rate after a non-finite loss (fedkd.distill)
    # Below: None when not reported. With distributed DP on nothing computed from private data
    # leaves the node outside the noisy sum, so a DP client reports none of the first four.
    teacher_accuracy: float | None = None  # its teacher's test accuracy
    num_examples: int | None = None  # size of its private partition (not with DP-SGD teachers)
    train_loss: float | None = None  # last local epoch's mean loss (not with DP-SGD teachers)
    upload_bytes: int | None = None  # float32 bytes of the public predictions it sends
    teacher_epsilon: float | None = None  # DP-SGD teachers: its epsilon over all rounds so far
    dp_noise_seconds: float | None = None  # distributed DP: time to draw its noise share
    stalled: int | None = None  # 1: local training left its teacher no better than its labels' class shares
    # (an eval-mode pass over its own data, counted in predict_seconds; not with DP-SGD teachers)
    secagg_seconds: float | None = None  # secure aggregation: making and sending its keys after training

    @classmethod
    def from_wire(cls, metrics: Mapping[str, float]) -> ClientMetrics:
        """From hyphenated keys (a MetricRecord, or `fedkd.task`'s metrics dict). "partition-id"
        and other keys that are not a client figure are not part of it; "train-seconds" is required."""
        known = {f.name: f.type for f in fields(cls)}  # name -> annotation as a string: "int | None"
        values = {}
        for key, value in metrics.items():
            name = key.replace("-", "_")
            if name in known:
                values[name] = int(value) if "int" in known[name] else float(value)
        return cls(**values)

    def to_wire(self) -> dict[str, float]:
        """Hyphenated keys, float values (a MetricRecord's), reported figures only."""
        return {f.name.replace("_", "-"): float(getattr(self, f.name)) for f in fields(self)
                if getattr(self, f.name) is not None}


# ---- what the server records per round ---------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class SecAggStats(_Record):
    """One secure-aggregation round as `fedkd.apps.secure.SecureRound` measured it. Client ids are
    partition ids; stage names are the protocol's ("share_keys", "unmask", ...). advertise_keys
    travels with the train exchange: its figure is the server's intake of the keys (and closing the
    stage), and the
    clients' key generation and upload fall in the round's seconds_clients."""

    survivors: list[int]  # clients whose inputs are in the sum, ascending
    dropped: dict[str, list[int]] = field(default_factory=dict)  # stage -> clients lost there
    refused: dict[str, list[int]] = field(default_factory=dict)  # stage -> replies that broke the protocol
    clipped: int = 0  # values clipped to the fixed-point range, over all survivors
    upload_bytes_per_client: float  # mean bytes a survivor sent, all stages, masked
    seconds_per_stage: dict[str, float] = field(default_factory=dict)  # wall time, messaging included
    seconds_total: float  # the protocol after training (the keys' intake, then the stages), wall time
    server_compute_seconds: dict[str, float] = field(default_factory=dict)  # the server's own work per stage
    client_compute_seconds: float | None = None  # the clients' protocol steps, summed (keys included)
    neighbors: int | None = None  # each client's masking partners
    threshold: int | None = None  # shares needed to reconstruct a secret
    clip: float | None = None  # fixed-point clipping bound, probability units
    error_bound: float | None = None  # worst rounding error of the decoded sum, per value


@dataclass(frozen=True, kw_only=True)
class PrivacyStats(_Row):
    """A released round under distributed DP: its accounting, then the mechanism's parameters
    (`fedkd.privacy.mechanism.DPParams.describe()`, same names)."""

    epsilon: float  # the run's epsilon after this round (at `delta`)
    delta: float
    honest_contributors: int  # in the sum and assumed not colluding with the server (at least 1)
    wrap_probability: float  # add it to delta, per round, for the full guarantee
    noise_std: float  # of the honest clients' noise in the sum, per coordinate, probability units
    wrapped_values: int  # values that wrapped around the ring in the sum
    mechanism: str  # "ddg" or "skellam"
    clip: float  # L2 bound of a client's centred soft labels
    noise_multiplier: float
    granularity: float  # the rounding step gamma, probability units
    dim: int  # values per client
    l2_sensitivity: float  # after rounding, in integer units
    l2_sensitivity_unrounded: float
    total_std: float  # noise std in the sum at the fewest honest clients sized for, integer units
    client_std: float  # one client's noise share std, integer units
    min_honest: int  # the fewest honest contributors the noise is sized for
    value_range: int  # integers a coordinate of the sum may span
    client_noise_seconds_max: float | None = None  # the slowest client's noise draw (set by the server)


@dataclass(frozen=True)
class TeacherEpsilon(_Record):
    """DP-SGD teachers: each client's own epsilon over all its rounds so far."""

    max: float
    delta: float
    per_client: dict[str, float]  # str(partition id) -> epsilon


@dataclass(frozen=True)
class RoundRecord(_Record):
    """One round as results.json records it; None where a part does not apply to the method
    (`local` has no student, `central` and `fedavg` no teachers, only secure rounds have `secagg`).
    Times are wall seconds; accuracies fractions of the test set."""

    round: int
    student_accuracy: float | None = None  # the global student (fd, central, fedavg)
    student_nll: float | None = None  # mean negative log-likelihood, nats
    student_ece: float | None = None  # expected calibration error
    # architecture-students: each teacher architecture's own global student's test accuracy (name -> accuracy)
    prototype_accuracy: dict[str, float] | None = None
    ensemble_accuracy: float | None = None  # the ensemble teacher (fd without DP: its test part)
    teacher_accuracy_mean: float | None = None  # over the clients that reported one
    teacher_accuracy_std: float | None = None
    contributors: int | None = None  # replies, then (fd) vectors in the sum
    upload_bytes_per_client: float | None = None  # int, or the secure sum's mean (float)
    eval_upload_bytes_per_client: int | None = None  # test-set predictions; None when inside the masked vector
    distill_epochs: int | None = None  # server distillation epochs run (early stopping)
    seconds: float | None = None  # the whole round (set by the driver)
    seconds_clients: float | None = None  # sending the round out and collecting replies
    seconds_aggregate: float | None = None
    seconds_distill: float | None = None  # fd: distillation; central: training
    seconds_evaluate: float | None = None
    client_train_seconds_max: float | None = None  # the slowest client's training
    client_predict_seconds_max: float | None = None
    # the clients' own work, summed over the cohort: training and predictions (and, with secure
    # aggregation, their protocol steps: `secagg.client_compute_seconds`); the floor a round's
    # engine adds its messaging to (simulations/scale.py)
    client_work_seconds: float | None = None
    secagg: SecAggStats | None = None
    privacy: PrivacyStats | None = None
    teacher_epsilon: TeacherEpsilon | None = None
    distill_recoveries: int | None = None  # restarts at half the rate after a non-finite loss (fedkd.distill)
    train_recoveries: int | None = None  # the same, summed over the clients
    stalled_clients: tuple[int, ...] | None = None  # whose local training learnt nothing (ClientMetrics.stalled);
    # None when no client reported the flag: distributed DP, DP-SGD teachers, local-epochs 0, fedavg, central
    cohort: tuple[int, ...] | None = None  # the client (partition) ids asked this round (set by the driver)
    # clients dropped in training: str(partition id) -> why their reply could not be used (the
    # client's own failure, its node's, or a malformed reply); None when every reply was used
    failed_clients: dict[str, str] | None = None

    @property
    def student_to_ensemble(self) -> float | None:
        """student accuracy / ensemble-teacher accuracy: how much of its teacher the student kept
        (results.json's derived "student_to_ensemble"); None without both or a 0 ensemble."""
        student, ensemble = self.student_accuracy, self.ensemble_accuracy
        if student is None or ensemble is None or not ensemble > 0:
            return None
        return student / ensemble

    def to_json(self) -> dict:
        """results.json's row: every key, in this order, null for a part that does not apply."""
        row = {}
        for f in fields(self):
            value = getattr(self, f.name)
            row[f.name] = (value.to_json() if hasattr(value, "to_json") else
                           list(value) if isinstance(value, tuple) else value)
        return row

    @classmethod
    def from_json(cls, row: Mapping) -> RoundRecord:
        """From a results.json row (`to_json()`'s keys; derived columns such as
        "student_to_ensemble" are not part of the record)."""
        values = {name: row.get(name) for name in ROUND_KEYS}
        for name, record in (("secagg", SecAggStats), ("privacy", PrivacyStats), ("teacher_epsilon", TeacherEpsilon)):
            if values[name] is not None:
                values[name] = record(**values[name])
        for name in ("cohort", "stalled_clients"):
            if values[name] is not None:
                values[name] = tuple(values[name])
        return cls(**values)


ROUND_KEYS = tuple(f.name for f in fields(RoundRecord))  # a round row's keys, in results.json's order
# the keys whose value, when there is one, is a block or a list rather than one number (read from the
# annotations, which this module's `from __future__ import annotations` keeps as strings: "int | None")
ROUND_BLOCKS = tuple(f.name for f in fields(RoundRecord) if f.type.split()[0] not in ("int", "float", "str"))


@dataclass(frozen=True)
class PrivacySpent(_Record):
    """The run's privacy so far (results.json's top-level "privacy"), kept even when a round is refused."""

    epsilon: float
    delta: float
    budget: float | None  # dp-epsilon-budget; None when there is none
    rounds_released: int
