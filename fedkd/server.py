"""The server's side of a round, without Flower: aggregate, build the ensemble teacher, distil and
evaluate the global student; plus the `central` baseline and evaluation for `fedavg`.

Owns: the student model and the consensus kept between rounds, and filling in each round's
`fedkd.rounds.RoundRecord` (one step per stage of the round). Reads public *inputs*, never public
labels unless `public-labels` is set; reads the test set only to evaluate.
Must not touch: Flower messaging (`fedkd.apps.server_app` moves messages) or files (`fedkd.results`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import numpy as np
import torch

from fedkd import distill
from fedkd.aggregate import Aggregate, ContributionError, plain_sum
from fedkd.config import Config
from fedkd.models import build_model
from fedkd.privacy.accounting import Ledger
from fedkd.privacy.mechanism import decode_sum
from fedkd.rounds import ClientMetrics, PrivacySpent, PrivacyStats, RoundRecord, SecAggStats, TeacherEpsilon
from fedkd.task import (
    Consensus, derive_seed, dp_params, generator, prototype_architectures, public_inputs, public_sample,
    resolve_device, splits_for, vector_layout,
)


class PrivacyBudgetError(RuntimeError):
    """A DP guarantee would not hold; the message says why. The run stops with its results saved.
    `status` is what results.json records: "budget-exhausted" or "too-few-survivors"."""

    def __init__(self, message: str, status: str = "budget-exhausted"):
        super().__init__(message)
        self.status = status


Aggregator = Callable[[Mapping[int, np.ndarray]], Aggregate]


@dataclass(frozen=True)
class ClientReply:
    """One client's train reply. `metrics` may be given as the hyphenated dict a client sends
    (`fedkd.task`'s, a MetricRecord's); it is kept as `ClientMetrics`."""

    partition_id: int
    vector: np.ndarray  # (d,) float32, empty when the method uploads no predictions
    metrics: ClientMetrics

    def __post_init__(self):
        if not isinstance(self.metrics, ClientMetrics):
            object.__setattr__(self, "metrics", ClientMetrics.from_wire(self.metrics))


def clients_record(server_round: int, replies: list[ClientReply], seconds_clients: float,
                   teacher_dp_delta: float) -> RoundRecord:
    """The round's record as far as the clients' own reports go (all that a `local` round has)."""
    if not replies:
        raise ContributionError(f"round {server_round}: no client replied")
    metrics = [r.metrics for r in replies]
    # with distributed DP on, clients keep their accuracies to themselves: None
    accs = np.array([m.teacher_accuracy for m in metrics if m.teacher_accuracy is not None])
    per_client = {str(r.partition_id): r.metrics.teacher_epsilon for r in replies
                  if r.metrics.teacher_epsilon is not None}  # DP-SGD teachers: each client's own epsilon
    flagged = [r for r in replies if r.metrics.stalled is not None]
    return RoundRecord(
        round=server_round,
        teacher_accuracy_mean=float(accs.mean()) if accs.size else None,
        teacher_accuracy_std=float(accs.std()) if accs.size else None,
        seconds_clients=seconds_clients, contributors=len(replies),
        client_train_seconds_max=max(m.train_seconds for m in metrics),
        client_predict_seconds_max=max(m.predict_seconds for m in metrics),
        client_work_seconds=sum(m.train_seconds + m.predict_seconds for m in metrics),
        upload_bytes_per_client=0, eval_upload_bytes_per_client=0,
        train_recoveries=sum(m.train_recoveries for m in metrics),
        teacher_epsilon=TeacherEpsilon(max(per_client.values()), teacher_dp_delta, per_client) if per_client else None,
        stalled_clients=tuple(sorted(r.partition_id for r in flagged if r.metrics.stalled)) if flagged else None,
    )


class DistillationServer:
    """Server state across rounds: the student (warm-started each round), with architecture-students
    one more student per other teacher architecture (`prototypes`), and the last consensus."""

    def __init__(self, config: Config, aggregate: Aggregator = plain_sum):
        self.config = config
        self.splits = splits_for(config)
        self.device = resolve_device(config.device)
        self.aggregate = aggregate
        torch.manual_seed(derive_seed(config.seed, "student-init"))
        self.student = build_model(config.student_model, self.splits.input_shape, self.splits.num_classes)
        # FedDF (Lin et al., NeurIPS 2020): one global model per architecture, each distilled from the
        # same ensemble; teachers of that architecture start from it. Only weights go down: the upload
        # stays the teachers' predictions. Measured: docs/results.md, "Mixed architectures".
        self.prototypes: dict[str, torch.nn.Module] = {}
        for name in prototype_architectures(config, self.splits):
            torch.manual_seed(derive_seed(config.seed, "student-init", name))
            self.prototypes[name] = build_model(name, self.splits.input_shape, self.splits.num_classes)
        self.consensus: Consensus | None = None
        self.ledger = Ledger(config.dp_delta, config.dp_epsilon_budget) if config.dp_enabled else None
        if self.ledger is not None:  # bit width, noise share size: refused now, not after local training
            dp_params(config, self.splits.num_classes, 1)

    def prototype_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """The per-architecture students' weights to send down (architecture name -> state dict): the
        live tensors, which the next round's distillation changes in place (copy them to keep them)."""
        return {name: model.state_dict() for name, model in self.prototypes.items()}

    def check_budget(self, server_round: int) -> None:
        """Before a round: refuse it if it could take epsilon past the budget (counting the fewest
        honest contributors the noise is sized for)."""
        if self.ledger is None or self.ledger.budget <= 0:
            return
        params = dp_params(self.config, self.splits.num_classes, server_round)
        if self.ledger.would_exceed(params):
            after = self.ledger.epsilon_after(params, params.min_honest)
            raise PrivacyBudgetError(
                f"round {server_round} would raise epsilon from {self.ledger.epsilon:.3f} to {after:.3f}, past the "
                f"budget {self.ledger.budget:g} (delta {self.ledger.delta:g}); stopped before releasing it")

    def privacy_spent(self) -> PrivacySpent | None:
        """What the run has spent so far under distributed DP (None without it)."""
        if self.ledger is None:
            return None
        budget = self.config.dp_epsilon_budget or None
        return PrivacySpent(self.ledger.epsilon, self.config.dp_delta, budget, len(self.ledger.honest))

    # ---- fd and local -----------------------------------------------------------------------
    def finish_round(
        self, server_round: int, replies: list[ClientReply], seconds_clients: float, aggregate: Aggregate | None = None
    ) -> RoundRecord:
        """Turn one round's client replies into the round record (and a better student for fd):
        the clients' figures; then, unless `local`, the ensemble teacher from the sum, the
        student distilled from it, the student evaluated.

        `aggregate`: the sum already computed elsewhere (secure aggregation); None: sum the
        replies' vectors with `self.aggregate`.
        """
        record = clients_record(server_round, replies, seconds_clients, self.config.teacher_dp_delta)
        if self.config.method == "local":
            return record
        record, teacher = self._ensemble_teacher(record, replies, aggregate)
        record = self._distil(record, teacher)
        return self._evaluate(record)

    def _sum(self, replies: list[ClientReply], aggregate: Aggregate | None, length: int) -> tuple[Aggregate, float]:
        """The round's sum of `length` values (given, or from the replies' vectors) and its seconds."""
        t0 = time.perf_counter()
        agg = aggregate if aggregate is not None else self.aggregate({r.partition_id: r.vector for r in replies})
        seconds = agg.details.get("seconds_total", time.perf_counter() - t0)
        if len(agg.total) != length:
            raise ContributionError(f"aggregate has {len(agg.total)} values; expected {length}")
        return agg, seconds

    def _ensemble_teacher(self, record: RoundRecord, replies: list[ClientReply],
                          aggregate: Aggregate | None) -> tuple[RoundRecord, distill.Teacher]:
        """Build the ensemble teacher on the public inputs (sample and views) from the sum (decoded
        and accounted under DP); the record gains the sum's figures and, with a test part, the
        ensemble's accuracy."""
        layout = vector_layout(self.config, self.splits, record.round)
        agg, seconds_aggregate = self._sum(replies, aggregate, layout.length)
        total, privacy = self._decode(record.round, agg, replies)
        (public_total, public_w), (test_total, test_w) = layout.unpack(total)  # (m, K), (n_test, K)
        teacher = self._combine(public_total, agg.count, public_w)
        ensemble_accuracy = None
        if layout.test:
            ensemble_accuracy = distill.accuracy(self._combine(test_total, agg.count, test_w).values,
                                                 self.splits.test_y)
        upload, eval_upload, secagg = layout.public_length * 4, (layout.length - layout.public_length) * 4, None
        if aggregate is not None:  # secure: what each client really sent, all stages, masked
            secagg = SecAggStats(**agg.details)
            upload, eval_upload = secagg.upload_bytes_per_client, None  # the test part is inside the masked vector
        record = replace(record, seconds_aggregate=seconds_aggregate, privacy=privacy, secagg=secagg,
                         ensemble_accuracy=ensemble_accuracy, contributors=agg.count,
                         upload_bytes_per_client=upload, eval_upload_bytes_per_client=eval_upload)
        return record, teacher

    def _decode(self, server_round: int, agg: Aggregate,
                replies: list[ClientReply]) -> tuple[np.ndarray, PrivacyStats | None]:
        """The sum's (d,) values: as summed, or under DP released (accounted, then decoded) with
        the round's PrivacyStats."""
        if self.ledger is None:
            return agg.total, None
        spent: dict = {}
        total = self._release(server_round, agg, spent)
        # the slowest client's noise generation, to set against the round's secure-aggregation time
        noise_seconds = max(r.metrics.dp_noise_seconds or 0.0 for r in replies)
        return total, replace(spent["privacy"], client_noise_seconds_max=noise_seconds)

    def _combine(self, total: np.ndarray, count: int, weights: np.ndarray | None) -> distill.Teacher:
        """(rows, K) summed client payloads -> the ensemble teacher under the run's ensemble rule."""
        cfg = self.config
        return distill.combine(total, count, cfg.ensemble, cfg.temperature, cfg.era_temperature, weights=weights)

    def _distil(self, record: RoundRecord, teacher: distill.Teacher) -> RoundRecord:
        """Distil the student (warm-started) from the ensemble teacher on the round's public
        inputs (the sample, then its views), or with `server-step` != 1 and a student distilled
        before, from a step past it (`distill.extrapolate`); that target on the sample becomes the
        consensus sent down next round. Each architecture's student (`prototypes`) is distilled first,
        by the same rule from the same ensemble, stepping from its own predictions."""
        cfg, server_round = self.config, record.round
        idx = public_sample(cfg, server_round)
        x = public_inputs(cfg, self.splits, server_round)  # (m * (1 + views), *shape)
        t0 = time.perf_counter()
        example = np.resize(np.arange(len(idx)), len(x))  # (rows,): row j*m + i is a view of example i
        # hard labels (public-labels): a view takes its example's; shifts keep the class, and so do
        # mirror images on the data view-flip is meant for (off for digits and text, whose mirrors differ)
        labels = self.splits.public_y[idx][example] if cfg.public_labels else None
        groups = example if len(x) > len(idx) else None  # validate on examples none of whose views train

        ensemble = teacher

        def fit(model, schedule, gen):  # the student, or an architecture's student: the same rule for each
            target = ensemble
            if cfg.step != 1 and self.consensus is not None:  # a model distilled before: a step from it
                target = distill.extrapolate(ensemble, distill.predict_logits(model, x, self.device), cfg.step)
            return target, distill.distill(model, x, target, schedule, generator=gen, device=self.device,
                                           labels=labels, hard_label_weight=cfg.hard_label_weight, groups=groups)

        for name, model in self.prototypes.items():
            fit(model, replace(distill.Schedule.server(cfg), phase=f"server distillation of the {name} student"),
                generator(cfg.seed, "distill", server_round, name))
        teacher, stats = fit(self.student, distill.Schedule.server(cfg), generator(cfg.seed, "distill", server_round))
        # the consensus sent down is the teacher on the public sample itself, without the views (sending
        # the views' rows too, for the joint term, measured no better: fashion3615 alpha 0.1, seed 0)
        self.consensus = Consensus(idx, replace(teacher, values=teacher.values[: len(idx)]))
        return replace(record, seconds_distill=time.perf_counter() - t0, distill_epochs=int(stats["epochs"]),
                       distill_recoveries=int(stats["recoveries"]))

    def _release(self, server_round: int, agg: Aggregate, out: dict) -> np.ndarray:
        """DP: account for the round with its actual honest contributors, then decode the noisy sum.
        A sum with fewer survivors than the noise is sized for is accounted (the server has seen
        it) and then refused: its noise is below the target. `out["privacy"]` receives the
        round's `PrivacyStats` before any refusal."""
        cfg = self.config
        params = dp_params(cfg, self.splits.num_classes, server_round)
        # every honest client in the sum has its own share in it: at least 1, however many collude
        honest = max(1, cfg.dp_honest(agg.count))
        epsilon = self.ledger.record(params, honest)
        out["privacy"] = PrivacyStats(
            epsilon=epsilon, delta=cfg.dp_delta, honest_contributors=honest,
            wrap_probability=params.wrap_probability,  # add it to delta, per round, for the full guarantee
            noise_std=params.honest_std(honest) * params.gamma,  # per coordinate, probability units
            wrapped_values=int(agg.details.get("clipped", 0)), **params.describe(),
        )
        if agg.count < cfg.dp_min_survivors:
            raise PrivacyBudgetError(
                f"round {server_round}: only {agg.count} of {cfg.cohort_size} clients survived (the round's "
                f"{'cohort' if cfg.clients_per_round else 'clients'}), fewer than the "
                f"{cfg.dp_min_survivors} the noise is sized for (dp-max-dropouts="
                f"{cfg.dp_max_dropouts}); the sum is discarded (epsilon so far {epsilon:.3f})",
                status="too-few-survivors")
        return decode_sum(agg.total, agg.count, params)

    # ---- central and fedavg -----------------------------------------------------------------
    def central_round(self, server_round: int) -> RoundRecord:
        """Upper bound: the student trained on the union of all private data (local-epochs per round)."""
        cfg = self.config
        x, y = self.splits.private_x, self.splits.private_y
        t0 = time.perf_counter()
        distill.train_supervised(self.student, x, y, distill.Schedule.local(cfg),
                                 generator=generator(cfg.seed, "central", server_round), device=self.device)
        return self._evaluate(RoundRecord(server_round, seconds_distill=time.perf_counter() - t0))

    def fedavg_record(self, server_round: int, state: Mapping[str, torch.Tensor], seconds_clients: float) -> RoundRecord:
        """Evaluate FedAvg's global model (the student architecture) after a round."""
        self.student.load_state_dict(state)
        n_values = sum(v.numel() for v in self.student.state_dict().values())
        record = RoundRecord(server_round, seconds_clients=seconds_clients, upload_bytes_per_client=n_values * 4)
        return self._evaluate(record)

    def evaluate_student(self) -> dict[str, float]:
        logits = distill.predict_logits(self.student, self.splits.test_x, self.device)
        return distill.evaluate_logits(logits, self.splits.test_y)

    def _evaluate(self, record: RoundRecord) -> RoundRecord:
        """The record with the student's test accuracy, NLL and ECE."""
        t0 = time.perf_counter()
        metrics = self.evaluate_student()
        prototypes = {name: distill.accuracy(distill.predict_logits(model, self.splits.test_x, self.device),
                                             self.splits.test_y)
                      for name, model in self.prototypes.items()} or None
        return replace(record, student_accuracy=metrics["accuracy"], student_nll=metrics["nll"],
                       student_ece=metrics["ece"], prototype_accuracy=prototypes,
                       seconds_evaluate=time.perf_counter() - t0)
