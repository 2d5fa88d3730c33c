"""The server's side of a round, without Flower: aggregate, build the ensemble teacher, distil and
evaluate the global student; plus the `central` baseline and evaluation for `fedavg`.

Owns: the student model and the consensus kept between rounds, and the per-round record (the
same keys for every method, None where one does not apply). Reads public *inputs*, never public
labels unless `public-labels` is set; reads the test set only to evaluate.
Must not touch: Flower messaging (`fedkd.apps.server_app` moves messages) or files (`fedkd.results`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch

from fedkd import distill
from fedkd.aggregate import Aggregate, ContributionError, plain_sum
from fedkd.config import Config
from fedkd.models import build_model
from fedkd.privacy.accounting import Ledger
from fedkd.privacy.mechanism import decode_sum
from fedkd.task import (
    Consensus, derive_seed, dp_params, generator, public_sample, resolve_device, splits_for, vector_layout,
)


class PrivacyBudgetError(RuntimeError):
    """A DP guarantee would not hold; the message says why. The run stops with its results saved.
    `status` is what results.json records: "budget-exhausted" or "too-few-survivors"."""

    def __init__(self, message: str, status: str = "budget-exhausted"):
        super().__init__(message)
        self.status = status

ROUND_KEYS = (
    "round", "student_accuracy", "student_nll", "student_ece", "ensemble_accuracy",
    "teacher_accuracy_mean", "teacher_accuracy_std", "contributors", "upload_bytes_per_client",
    "eval_upload_bytes_per_client", "distill_epochs", "seconds", "seconds_clients",
    "seconds_aggregate", "seconds_distill", "seconds_evaluate", "client_train_seconds_max",
    "client_predict_seconds_max", "secagg", "privacy", "teacher_epsilon",
    "distill_recoveries", "train_recoveries",  # restarts at half the rate after a non-finite loss (fedkd.distill)
    "cohort",  # the client (partition) ids asked to take part this round (clients-per-round; all when 0)
)

Aggregator = Callable[[Mapping[int, np.ndarray]], Aggregate]


def empty_record(server_round: int) -> dict:
    record = dict.fromkeys(ROUND_KEYS)
    record["round"] = server_round
    return record


@dataclass(frozen=True)
class ClientReply:
    partition_id: int
    vector: np.ndarray  # (d,) float32, empty when the method uploads no predictions
    metrics: Mapping[str, float]


class DistillationServer:
    """Server state across rounds: the student (warm-started each round) and the last consensus."""

    def __init__(self, config: Config, aggregate: Aggregator = plain_sum):
        self.config = config
        self.splits = splits_for(config)
        self.device = resolve_device(config.device)
        self.aggregate = aggregate
        torch.manual_seed(derive_seed(config.seed, "student-init"))
        self.student = build_model(config.student_model, self.splits.input_shape, self.splits.num_classes)
        self.consensus: Consensus | None = None
        self.ledger = Ledger(config.dp_delta, config.dp_epsilon_budget) if config.dp_enabled else None
        if self.ledger is not None:  # bit width, noise share size: refused now, not after local training
            dp_params(config, self.splits.num_classes, 1)

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

    # ---- fd and local -----------------------------------------------------------------------
    def finish_round(
        self, server_round: int, replies: list[ClientReply], seconds_clients: float, aggregate: Aggregate | None = None
    ) -> dict:
        """Turn one round's client replies into the round record (and a better student for fd).

        `aggregate`: the sum already computed elsewhere (secure aggregation); None: sum the
        replies' vectors with `self.aggregate`.
        """
        cfg, record = self.config, empty_record(server_round)
        if not replies:
            raise ContributionError(f"round {server_round}: no client replied")
        accs = np.array([r.metrics["teacher-accuracy"] for r in replies if "teacher-accuracy" in r.metrics])
        record.update(  # with DP on, clients keep their accuracies to themselves: None
            teacher_accuracy_mean=float(accs.mean()) if accs.size else None,
            teacher_accuracy_std=float(accs.std()) if accs.size else None,
            seconds_clients=seconds_clients, contributors=len(replies),
            client_train_seconds_max=max(float(r.metrics["train-seconds"]) for r in replies),
            client_predict_seconds_max=max(float(r.metrics.get("predict-seconds", 0.0)) for r in replies),
            upload_bytes_per_client=0, eval_upload_bytes_per_client=0,
            train_recoveries=int(sum(float(r.metrics.get("train-recoveries", 0.0)) for r in replies)),
        )
        if any("teacher-epsilon" in r.metrics for r in replies):  # DP-SGD teachers: each client's own epsilon
            per_client = {str(r.partition_id): float(r.metrics["teacher-epsilon"]) for r in replies}
            record["teacher_epsilon"] = {"max": max(per_client.values()), "delta": cfg.teacher_dp_delta,
                                         "per_client": per_client}
        if cfg.method == "local":
            return record

        layout = vector_layout(cfg, self.splits, server_round)
        t0 = time.perf_counter()
        agg = aggregate if aggregate is not None else self.aggregate({r.partition_id: r.vector for r in replies})
        record["seconds_aggregate"] = agg.details.get("seconds_total", time.perf_counter() - t0)
        if len(agg.total) != layout.length:
            raise ContributionError(f"aggregate has {len(agg.total)} values; expected {layout.length}")
        total = agg.total
        if self.ledger is not None:
            total = self._release(server_round, agg, record)
            # the slowest client's noise generation, to set against the round's secure-aggregation time
            record["privacy"]["client_noise_seconds_max"] = max(
                float(r.metrics.get("dp-noise-seconds", 0.0)) for r in replies)
        (public_total, public_w), (test_total, test_w) = layout.unpack(total)  # (m, K), (n_test, K)
        teacher = distill.combine(public_total, agg.count, cfg.ensemble, cfg.temperature, cfg.era_temperature,
                                  weights=public_w)
        if layout.test:
            ensemble_test = distill.combine(test_total, agg.count, cfg.ensemble, cfg.temperature,
                                            cfg.era_temperature, weights=test_w)
            record["ensemble_accuracy"] = distill.accuracy(ensemble_test.values, self.splits.test_y)
        record.update(
            contributors=agg.count,
            upload_bytes_per_client=layout.public_length * 4,
            eval_upload_bytes_per_client=(layout.length - layout.public_length) * 4,
        )
        if aggregate is not None:  # secure: what each client really sent, all stages, masked
            record["secagg"] = agg.details
            record["upload_bytes_per_client"] = agg.details["upload_bytes_per_client"]
            record["eval_upload_bytes_per_client"] = None  # the test part travels inside the masked vector

        idx = public_sample(cfg, server_round)
        t0 = time.perf_counter()
        labels = self.splits.public_y[idx] if cfg.public_labels else None
        stats = distill.distill(
            self.student, self.splits.public_x[idx], teacher,
            epochs=cfg.distill_epochs, lr=cfg.distill_lr, batch_size=cfg.distill_batch_size,
            val_fraction=cfg.val_fraction, patience=cfg.patience,
            generator=generator(cfg.seed, "distill", server_round), device=self.device,
            labels=labels, hard_label_weight=cfg.hard_label_weight, optimizer=cfg.distill_optimizer,
        )
        record["seconds_distill"] = time.perf_counter() - t0
        record["distill_epochs"] = int(stats["epochs"])
        record["distill_recoveries"] = int(stats["recoveries"])
        self.consensus = Consensus(idx, teacher)
        self._evaluate_into(record)
        return record

    def _release(self, server_round: int, agg: Aggregate, record: dict) -> np.ndarray:
        """DP: account for the round with its actual honest contributors, then decode the noisy sum.
        A sum with fewer survivors than the noise is sized for is accounted (the server has seen
        it) and then refused: its noise is below the target."""
        cfg = self.config
        params = dp_params(cfg, self.splits.num_classes, server_round)
        # every honest client in the sum has its own share in it: at least 1, however many collude
        honest = max(1, cfg.dp_honest(agg.count))
        epsilon = self.ledger.record(params, honest)
        record["privacy"] = {
            "epsilon": epsilon, "delta": cfg.dp_delta, "honest_contributors": honest,
            "wrap_probability": params.wrap_probability,  # add it to delta, per round, for the full guarantee
            "noise_std": params.honest_std(honest) * params.gamma,  # per coordinate, probability units
            "wrapped_values": int(agg.details.get("clipped", 0)), **params.describe(),
        }
        if agg.count < cfg.dp_min_survivors:
            raise PrivacyBudgetError(
                f"round {server_round}: only {agg.count} of {cfg.cohort_size} clients survived (the round's "
                f"{'cohort' if cfg.clients_per_round else 'clients'}), fewer than the "
                f"{cfg.dp_min_survivors} the noise is sized for (dp-max-dropouts="
                f"{cfg.dp_max_dropouts}); the sum is discarded (epsilon so far {epsilon:.3f})",
                status="too-few-survivors")
        return decode_sum(agg.total, agg.count, params)

    # ---- central and fedavg -----------------------------------------------------------------
    def central_round(self, server_round: int) -> dict:
        """Upper bound: the student trained on the union of all private data (local-epochs per round)."""
        cfg, record = self.config, empty_record(server_round)
        x, y = self.splits.private_x, self.splits.private_y
        t0 = time.perf_counter()
        distill.train_supervised(
            self.student, x, y, epochs=cfg.local_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
            generator=generator(cfg.seed, "central", server_round), device=self.device,
        )
        record["seconds_distill"] = time.perf_counter() - t0
        self._evaluate_into(record)
        return record

    def fedavg_record(self, server_round: int, state: Mapping[str, torch.Tensor], seconds_clients: float) -> dict:
        """Evaluate FedAvg's global model (the student architecture) after a round."""
        record = empty_record(server_round)
        self.student.load_state_dict(state)
        n_values = sum(v.numel() for v in self.student.state_dict().values())
        record.update(seconds_clients=seconds_clients, upload_bytes_per_client=n_values * 4)
        self._evaluate_into(record)
        return record

    def evaluate_student(self) -> dict[str, float]:
        logits = distill.predict_logits(self.student, self.splits.test_x, self.device)
        return distill.evaluate_logits(logits, self.splits.test_y)

    def _evaluate_into(self, record: dict) -> None:
        t0 = time.perf_counter()
        metrics = self.evaluate_student()
        record.update(
            student_accuracy=metrics["accuracy"], student_nll=metrics["nll"], student_ece=metrics["ece"],
            seconds_evaluate=time.perf_counter() - t0,
        )
