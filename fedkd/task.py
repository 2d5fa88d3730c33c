"""What one client does in a round, and the helpers client and server share.

Owns: device choice, seeded generators, the per-round public sample and its views, loading the
splits a config names, and the client's work: train (or continue) its teacher, optionally digest
last round's consensus first, and emit the vector to be summed. For `fedavg` it trains the global
student architecture instead. Must not touch: Flower messages (the apps wrap these functions) or files.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from fedkd import distill
from fedkd.config import Config
from fedkd.data import DataSpec, Splits, load_splits
from fedkd.data.views import views
from fedkd.models import build_model, resolve
from fedkd.privacy import mechanism
from fedkd.privacy.mechanism import DPParams

WRAP_PROBABILITY = 1e-9  # chance, per round, that any client's noisy value is clipped to the ring range


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA GPU; use device 'auto' or 'cpu'")
    return torch.device(name)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the run seed and a purpose, stable across processes (unlike hash())."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def splits_for(config: Config) -> Splits:
    return load_splits(DataSpec.from_config(config))


def public_sample(config: Config, server_round: int) -> np.ndarray:
    """Indices (m,) into the public set released this round; client and server derive the same."""
    n = config.num_public
    if config.public_sample in (0, n):
        return np.arange(n)
    rng = np.random.default_rng(derive_seed(config.seed, "public-sample", server_round))
    return np.sort(rng.choice(n, size=config.public_sample, replace=False))


def public_inputs(config: Config, splits: Splits, server_round: int) -> np.ndarray:
    """The inputs (rows, *shape) the teachers label this round: the public sample (m rows), then
    its `public-views` augmented views (m rows each, `fedkd.data.views`), seeded by the run seed
    and the round so that client and server derive the same rows without a message."""
    x = splits.public_x[public_sample(config, server_round)]
    count = config.views_for(splits.input_shape)
    if count == 0:
        return x
    return np.concatenate([x, views(x, count, flip=config.view_flip,
                                    seed=derive_seed(config.seed, "views", server_round))])


def query_rows(config: Config, server_round: int, input_shape: tuple[int, ...] | None = None) -> int:
    """How many rows of soft labels a client releases this round (`public_inputs`' length). Without
    `input_shape` auto counts as 0 views, what it resolves to under distributed DP: the DP sizing
    (`dp_params`, the only caller without a shape) needs no shape."""
    count = config.views_for(input_shape) if input_shape is not None else max(config.public_views, 0)
    return len(public_sample(config, server_round)) * (1 + count)


def sample_cohort(config: Config, server_round: int) -> tuple[int, ...]:
    """The client (partition) ids asked to take part in this round, sorted: `clients-per-round`
    of them drawn without replacement with a seed derived from the run seed and the round, or
    every client when it is 0. The server draws it over partition ids, not Flower's node ids (which
    are random per run), so the same seed gives the same cohorts in every run and deployment."""
    if config.cohort_size == config.num_clients:
        return tuple(range(config.num_clients))
    rng = np.random.default_rng(derive_seed(config.seed, "cohort", server_round))
    return tuple(int(i) for i in np.sort(rng.choice(config.num_clients, size=config.cohort_size, replace=False)))


@dataclass(frozen=True)
class Layout:
    """A client's upload, in order: the public block, then the test block. Each block holds
    rows * K soft labels (each scaled by the client's vote weight, when weighting is on), then
    the block's weights: K per class (vote-weighting), one per row (confidence-weighting) or
    none. The server divides the summed labels by the summed weights (`distill.combine`)."""

    public: int  # rows of this round's public inputs: m * (1 + views) (`query_rows`)
    test: int  # rows of the test set (0 with DP: predictions on it would be a release too)
    classes: int  # K
    weighting: str = "none"  # "none", "class" or "example"

    def weights_of(self, rows: int) -> int:
        return {"none": 0, "class": self.classes, "example": rows}[self.weighting]

    @property
    def public_length(self) -> int:
        return self.public * self.classes + self.weights_of(self.public)

    @property
    def length(self) -> int:
        return self.public_length + self.test * self.classes + self.weights_of(self.test)

    def pack(self, public: tuple[np.ndarray, np.ndarray | None], test: tuple[np.ndarray, np.ndarray | None]
             ) -> np.ndarray:
        """(labels (rows, K), weights or None) for each block -> the flat float32 vector."""
        parts = []
        for labels, weights in (public, test):
            parts.append(np.asarray(labels, dtype=np.float32).ravel())
            if self.weighting != "none":
                parts.append(np.asarray(weights, dtype=np.float32).ravel())
        return np.concatenate(parts)

    def unpack(self, total: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray | None], ...]:
        """The summed vector -> ((labels (m, K), weights (1, K) | (m, 1) | None), same for test)."""
        out, start = [], 0
        for rows in (self.public, self.test):
            labels = total[start : start + rows * self.classes].reshape(rows, self.classes)
            start += rows * self.classes
            n_w = self.weights_of(rows)
            weights = total[start : start + n_w] if n_w else None
            if weights is not None:
                weights = weights.reshape(1, -1) if self.weighting == "class" else weights.reshape(-1, 1)
            start += n_w
            out.append((labels, weights))
        return tuple(out)


def weighting_of(config: Config) -> str:
    if config.vote_rule != "none":
        return "class"
    return "example" if config.confidence_weighting != "none" else "none"


def vector_layout(config: Config, splits: Splits, server_round: int) -> Layout:
    """The layout of the vector a client uploads this round (`Layout`)."""
    n_test = 0 if config.dp_enabled else len(splits.test_y)
    return Layout(query_rows(config, server_round, splits.input_shape), n_test, splits.num_classes,
                  weighting_of(config))


def dp_params(config: Config, num_classes: int, server_round: int) -> DPParams:
    """The round's distributed-DP settings, derived alike on client and server from the config
    (with dp-target-epsilon, the noise multiplier comes from `noise_multiplier_for`)."""
    z = noise_multiplier_for(config, num_classes) if config.dp_target_epsilon > 0 else config.dp_noise_multiplier
    return _dp_params(config, num_classes, query_rows(config, server_round), z)


def _dp_params(config: Config, num_classes: int, m: int, z: float) -> DPParams:
    return DPParams(
        mechanism=config.dp_mechanism, clip=config.dp_clip, noise_multiplier=z,
        granularity_bits=config.dp_granularity_bits, dim=m * num_classes, num_classes=num_classes,
        # n is the round's cohort: only its clients add noise shares (no amplification by sampling is
        # claimed: the server picks the cohort and sees who is in it)
        num_clients=config.cohort_size, min_honest=config.dp_min_honest,
        bit_width=config.ring_bits, wrap_probability=WRAP_PROBABILITY,
    )


@functools.lru_cache(maxsize=16)
def noise_multiplier_for(config: Config, num_classes: int) -> float:
    """The smallest z (to 0.1%) with which all `rounds` rounds, each with the fewest honest
    clients the noise is sized for, spend at most dp-target-epsilon at dp-delta. Every round
    releases the same number of queries, so one z serves all; it is a deterministic function of
    the config, so clients and server agree on it without a message."""
    from fedkd.privacy.accounting import calibrate

    m = query_rows(config, 1)
    return calibrate(lambda z: _dp_params(config, num_classes, m, z), config.rounds, config.dp_min_honest,
                     config.dp_target_epsilon, config.dp_delta)


def class_weights(y: np.ndarray, num_classes: int, scheme: str) -> np.ndarray | None:
    """(K,) scale of a client's vote for each class, or None for "none". The server divides
    each class's summed votes by the class's summed weights, so a class's probability is the
    weighted mean over the clients that vote for it.

    class-share: K * the class's share of the client's data (1 everywhere for a balanced client);
    seen-classes: 1 for classes the client has examples of, 0 for the others: each class is
    judged by the clients that have seen it (a client that never saw a class cannot tell it
    from the others, and its vote for it is noise under label skew).
    """
    counts = np.bincount(y, minlength=num_classes)
    if scheme == "class-share":
        return (num_classes * counts / len(y)).astype(np.float32)
    if scheme == "seen-classes":
        return (counts > 0).astype(np.float32)
    return None


@dataclass(frozen=True)
class Consensus:
    """Last round's ensemble teacher on its public sample (with `server-step` != 1, the student's
    stepped target there), sent back to clients for the digest step and the joint term."""

    indices: np.ndarray  # (m,) int64 into the public set
    teacher: distill.Teacher


@dataclass(frozen=True)
class TeacherUpdate:
    state: dict[str, torch.Tensor]  # the teacher's weights, to keep on the node for the next round
    vector: np.ndarray  # float32 (`Layout`): public payload (rows*K), test-set payload (n_test*K), with weights;
    # with DP: (rows*K,) float64 integers, the rounded centred payload plus this client's noise share
    metrics: dict[str, float]
    dp_history: tuple = ()  # DP-SGD accounting events so far (fedkd.privacy.dpsgd.Event), kept on the node
    # it started from a global student (teacher-init student): its weights need not stay on the node
    from_student: bool = False
    engine: str = "sequential"  # how it trained: "sequential" (teacher_round) or "stacked" (fedkd.stacked)


@dataclass(frozen=True)
class LocalFit:
    """What local training reports (`train_teacher`)."""

    loss: float  # the last epoch's mean loss (nan for 0 epochs)
    recoveries: float  # restarts after divergence (DP-SGD has none)
    dp_history: tuple = ()  # DP-SGD: the client's accounting events, this round's included
    epsilon: float | None = None  # DP-SGD: the client's epsilon over all of them; None without DP-SGD


def teacher_round(
    config: Config,
    partition_id: int,
    server_round: int,
    state: dict[str, torch.Tensor] | None,
    consensus: Consensus | None = None,
    with_predictions: bool = True,
    dp_history: tuple = (),
    student: dict[str, torch.Tensor] | None = None,
    prototypes: Mapping[str, dict[str, torch.Tensor]] | None = None,
) -> TeacherUpdate:
    """One client's fd round: start -> (digest) -> train -> evaluate -> release, each a function below.

    With teacher-init student and `student` (the global student's weights, sent down by the
    server) the teacher starts from them and skips the digest. A teacher of another architecture
    starts from that architecture's global student in `prototypes` (architecture-students; name ->
    weights, sent down too) and skips the digest as well; without one it keeps its own weights
    (`state`) and digests the consensus.

    The vector is `client_payload(logits)` on this round's public inputs (`public_inputs`: the
    sample, then its views), then on the test set (the test part only serves to report the
    ensemble teacher's accuracy). With DP on it is the
    DP encoding of the public part alone (`fedkd.privacy.mechanism.encode`). With teacher DP-SGD
    on, local training is `fedkd.privacy.dpsgd.train`, `dp_history` carries the client's earlier
    DP-SGD steps in, and its epsilon over all of them goes out as the "teacher-epsilon" metric.
    """
    splits = splits_for(config)
    if not 0 <= partition_id < len(splits.partitions):
        raise ValueError(f"partition-id {partition_id} is outside 0..{len(splits.partitions) - 1}")
    device = resolve_device(config.device)
    model, from_student = start_teacher(config, splits, partition_id, state, student, prototypes)
    x, y = splits.client(partition_id)
    gen = generator(config.seed, "client", partition_id, server_round)  # digest, then training, draw from it
    # last round's consensus on its public inputs (m, *shape): the digest's target and the joint term
    joint = None if consensus is None else distill.JointTerm(splits.public_x[consensus.indices], consensus.teacher,
                                                             config.joint_weight)

    t0 = time.perf_counter()
    recoveries = 0.0
    if joint is not None and config.digest_epochs > 0 and not from_student:  # the student has digested it
        recoveries += digest(model, config, joint.x, joint.teacher, generator=gen, device=device,
                             phase=f"client {partition_id}'s digest step")
    fit = train_teacher(model, config, x, y, generator=gen, device=device,
                        phase=f"client {partition_id}'s local training", joint=joint, dp_history=dp_history)
    metrics = {"partition-id": float(partition_id), "train-seconds": time.perf_counter() - t0,
               "train-recoveries": recoveries + fit.recoveries}
    if fit.epsilon is not None:
        metrics["teacher-epsilon"] = fit.epsilon

    t0 = time.perf_counter()
    test_logits, tested = evaluate_teacher(model, config, splits, x, y, fit.loss, device)
    metrics.update(tested)
    vector = np.zeros(0, dtype=np.float32)
    if with_predictions:
        vector, sent = release(model, config, splits, y, server_round, device, test_logits)
        metrics.update(sent)
    metrics["predict-seconds"] = time.perf_counter() - t0
    cpu_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return TeacherUpdate(cpu_state, vector, metrics, tuple(fit.dp_history), from_student)


@dataclass(frozen=True)
class ClientStart:
    """What a node holds of one client between rounds: its teacher's weights where they persist,
    its DP-SGD accounting history."""

    state: dict[str, torch.Tensor] | None = None
    dp_history: tuple = ()


def cohort_teachers(
    config: Config,
    server_round: int,
    clients: Mapping[int, ClientStart],
    consensus: Consensus | None = None,
    student: dict[str, torch.Tensor] | None = None,
    prototypes: Mapping[str, dict[str, torch.Tensor]] | None = None,
    with_predictions: bool = True,
) -> dict[int, TeacherUpdate | Exception]:
    """The round's teacher work of the clients one node hosts: client id -> its `teacher_round`,
    or the exception that stopped it (one client's failure is its own: the others go on).

    Under cohort-engine auto or stacked, clients of one architecture train together as one stacked
    model where it applies (`fedkd.stacked`); the rest run one after another (all of them under
    sequential, the default). Each client draws from its own seeded streams: sequential results do
    not depend on which clients share a node, and stacked ones match them within float rounding."""
    from fedkd import stacked

    splits = splits_for(config)
    plan = stacked.plan(config, splits.input_shape, splits.num_classes,
                        [pid for pid in clients if 0 <= pid < len(splits.partitions)], resolve_device(config.device))
    out: dict[int, TeacherUpdate | Exception] = {}
    for group in plan.stacked:
        out.update(stacked.teacher_rounds(config, server_round, {pid: clients[pid] for pid in group}, consensus,
                                          student, prototypes, with_predictions))
    for pid, start in clients.items():
        if pid in out:
            continue
        try:
            out[pid] = teacher_round(config, pid, server_round, start.state, consensus, with_predictions,
                                     start.dp_history, student, prototypes)
        except Exception as exc:  # noqa: BLE001 (reported per client by the node)
            out[pid] = exc
    return {pid: out[pid] for pid in clients}


def cohort_fedavg(config: Config, server_round: int, ids, global_state: dict[str, torch.Tensor]
                  ) -> dict[int, tuple[dict[str, torch.Tensor], dict[str, float]] | Exception]:
    """FedAvg's local step for each client a node hosts (`fedavg_round`), or the exception that
    stopped it."""
    out: dict[int, tuple[dict[str, torch.Tensor], dict[str, float]] | Exception] = {}
    for pid in ids:
        try:
            out[pid] = fedavg_round(config, pid, server_round, global_state)
        except Exception as exc:  # noqa: BLE001
            out[pid] = exc
    return out


def initial_teacher(config: Config, splits: Splits, partition_id: int) -> torch.nn.Module:
    """Client `partition_id`'s teacher at its seeded initialisation, the same in every run and
    round. Seeds torch's global generator (a caller that must keep its own stream forks it)."""
    torch.manual_seed(derive_seed(config.seed, "init", partition_id))
    return build_model(config.teacher_model_for(partition_id), splits.input_shape, splits.num_classes)


def start_teacher(config: Config, splits: Splits, partition_id: int, state: dict[str, torch.Tensor] | None,
                  student: dict[str, torch.Tensor] | None,
                  prototypes: Mapping[str, dict[str, torch.Tensor]] | None = None) -> tuple[torch.nn.Module, bool]:
    """This round's teacher before training, and whether it starts from a global student
    (teacher-init student): the student when its weights fit, else its architecture's entry in
    `prototypes` when that fits; else from its own `state`, else from `initial_teacher`."""
    model = initial_teacher(config, splits, partition_id)  # seeds even when weights load next: later draws see it
    start = None
    if config.teacher_init == "student":
        own = resolve(config.teacher_model_for(partition_id), splits.input_shape)
        for candidate in (student, (prototypes or {}).get(own)):
            if candidate is not None and fits(model, candidate):
                start = candidate
                break
    from_student = start is not None
    if from_student:
        model.load_state_dict(start)
    elif state is not None:
        model.load_state_dict(state)
    return model, from_student


def digest(model: torch.nn.Module, config: Config, consensus_x: np.ndarray, consensus: distill.Teacher, *,
           generator: torch.Generator, device: torch.device, phase: str) -> float:
    """The digest step (FedMD, DS-FL): distil last round's consensus on its public inputs
    `consensus_x` (m, *shape) into `model`, in place. Returns the divergence recoveries."""
    result = distill.distill(model, consensus_x, consensus, distill.Schedule.digest(config, phase),
                             generator=generator, device=device)
    return result["recoveries"]


def train_teacher(
    model: torch.nn.Module, config: Config, x: np.ndarray, y: np.ndarray, *, generator: torch.Generator,
    device: torch.device, phase: str, joint: distill.JointTerm | None = None, dp_history: tuple = (),
) -> LocalFit:
    """Local training of `model` on the private (x (N, *shape), y (N,)), in place: DP-SGD when
    teacher DP-SGD is on (continuing `dp_history`; Opacus clips per example, so `clip-norm` does
    not apply), else cross-entropy with clipped steps, joined by the KD term on last round's
    consensus (`joint`)."""
    schedule = distill.Schedule.local(config, phase)
    if config.teacher_dp_enabled:
        from fedkd.privacy import dpsgd

        trained = dpsgd.train(model, x, y, schedule, dpsgd.Noise.from_config(config), device=device,
                              history=dp_history)
        return LocalFit(trained.loss, 0.0, tuple(trained.history), trained.epsilon)
    fit = distill.train_supervised(model, x, y, schedule, generator=generator, device=device, joint=joint)
    return LocalFit(fit["loss"], fit["recoveries"], tuple(dp_history))


def evaluate_teacher(model: torch.nn.Module, config: Config, splits: Splits, x: np.ndarray, y: np.ndarray,
                     loss: float, device: torch.device) -> tuple[np.ndarray | None, dict[str, float]]:
    """The teacher's (n_test, K) test logits and what the client reports besides its vector:
    test accuracy, and without DP-SGD its example count, training loss and whether local
    training "stalled": on its own data x (N, *shape), y (N,) the teacher does no better than
    its labels' class shares (`distill.learnt_nothing`), so the server can name it. With
    distributed DP on, nothing computed from private data leaves the node outside the noisy sum:
    no test accuracy, loss, count or flag (they would sit outside the guarantee), and no logits."""
    if config.dp_enabled:
        return None, {}
    test_logits = distill.predict_logits(model, splits.test_x, device)  # (n_test, K)
    own = distill.predict_logits(model, x, device) if reports_stall(config) else None
    return test_logits, teacher_report(config, splits, y, loss, test_logits, own)


def cohort_engine(config: Config, splits: Splits) -> str:
    """What cohort-engine resolves to for these settings (`fedkd.stacked.describe`), e.g. "stacked"
    or "sequential (DP-SGD teachers (Opacus) train one model at a time)", for the resolved settings."""
    from fedkd import stacked

    return stacked.describe(config, splits.input_shape, splits.num_classes, resolve_device(config.device))


def reports_stall(config: Config) -> bool:
    """Whether a client reports the stall bit, for which its teacher labels its own data."""
    return not config.dp_enabled and not config.teacher_dp_enabled and config.local_epochs > 0


def teacher_report(config: Config, splits: Splits, y: np.ndarray, loss: float, test_logits: np.ndarray,
                   own_logits: np.ndarray | None) -> dict[str, float]:
    """`evaluate_teacher`'s metrics from the teacher's test logits (n_test, K) and, where the stall
    bit is reported, its logits on its own data (N, K)."""
    metrics = {"teacher-accuracy": distill.accuracy(test_logits, splits.test_y)}  # of the model: post-processing
    if not config.teacher_dp_enabled:  # these are not outputs of the DP-SGD model alone
        metrics.update({"num-examples": float(len(y)), "train-loss": loss})
        if config.local_epochs > 0:  # one bit about its training, from one eval-mode pass over its data
            metrics["stalled"] = float(distill.learnt_nothing(own_logits, y))
    return metrics


def soft_labels(config: Config, logits: np.ndarray, weights: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """(rows, K) logits -> the (rows, K) weighted soft labels a client sends for them, and the
    weights the server divides their sum by: the class weights (K,), else the per-example
    confidences (rows,) with confidence weighting, else None."""
    conf = distill.confidence(logits, config.confidence_weighting) if config.confidence_weighting != "none" else None
    labels = distill.client_payload(logits, config.ensemble, config.temperature, weights, conf)
    return labels, (weights if weights is not None else conf)


def public_release(model: torch.nn.Module, config: Config, splits: Splits, y: np.ndarray, x: np.ndarray,
                   device: torch.device) -> tuple[np.ndarray, np.ndarray | None]:
    """The client's (m, K) soft labels on the public inputs x (m, *shape), and their weights
    (`soft_labels`); its vote per class comes from its private labels y (N,)."""
    logits = distill.predict_logits(model, x, device)  # (m, K)
    return soft_labels(config, logits, class_weights(y, splits.num_classes, config.vote_rule))


def release(model: torch.nn.Module, config: Config, splits: Splits, y: np.ndarray, server_round: int,
            device: torch.device, test_logits: np.ndarray | None) -> tuple[np.ndarray, dict[str, float]]:
    """The vector to be summed (`TeacherUpdate.vector`) and its metrics: the public block on
    this round's public inputs (sample and views), DP-encoded with DP on; else packed with the test block, the soft
    labels of `test_logits` (n_test, K)."""
    public_logits = distill.predict_logits(model, public_inputs(config, splits, server_round), device)  # (m, K)
    return release_logits(config, splits, y, server_round, public_logits, test_logits)


def release_logits(config: Config, splits: Splits, y: np.ndarray, server_round: int, public_logits: np.ndarray,
                   test_logits: np.ndarray | None) -> tuple[np.ndarray, dict[str, float]]:
    """`release` from the teacher's logits on this round's public inputs (rows, K) and the test set."""
    layout = vector_layout(config, splits, server_round)
    public = soft_labels(config, public_logits, class_weights(y, splits.num_classes, config.vote_rule))
    metrics: dict[str, float] = {}
    if config.dp_enabled:
        # noise from the OS's entropy, never from the run seed: the server knows the seed
        rng = np.random.default_rng(np.random.SeedSequence())
        encoded = mechanism.encode(public[0], dp_params(config, splits.num_classes, server_round), rng)
        vector = encoded.values
        metrics["dp-noise-seconds"] = encoded.noise_seconds
    else:
        weights = class_weights(y, splits.num_classes, config.vote_rule)
        vector = layout.pack(public, soft_labels(config, test_logits, weights))
    metrics["upload-bytes"] = float(layout.public_length * 4)
    return vector, metrics


def prototype_architectures(config: Config, splits: Splits) -> tuple[str, ...]:
    """The teacher architectures (resolved names, sorted) that get a global student of their own
    (architecture-students, FedDF's per-architecture models): those unlike the student's, under
    teacher-init student and fd. Empty otherwise, and for a single architecture."""
    if not (config.method == "fd" and config.teacher_init == "student" and config.architecture_students):
        return ()
    student = resolve(config.student_model, splits.input_shape)
    names = {resolve(config.teacher_model_for(i), splits.input_shape) for i in range(config.num_clients)}
    return tuple(sorted(names - {student}))


def starting_weights(config: Config, splits: Splits, partition_id: int, student: dict | None,
                     prototypes: Mapping[str, dict]) -> tuple[dict | None, dict[str, dict]]:
    """What the server sends client `partition_id` to start from (`start_teacher` picks from it):
    its architecture's global student alone when there is one (`prototypes`, architecture-students;
    the student's weights would not load into it), else the student. Each client downloads one
    model, not every architecture's."""
    own = resolve(config.teacher_model_for(partition_id), splits.input_shape)
    if own in prototypes:
        return None, {own: prototypes[own]}
    return student, {}


def fits(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether `state` (the student's weights) loads into `model`: same names and shapes."""
    own = model.state_dict()
    return own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own)


def fedavg_round(
    config: Config, partition_id: int, server_round: int, global_state: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """FedAvg baseline on the client: train the student architecture from the global weights."""
    splits = splits_for(config)
    device = resolve_device(config.device)
    model = build_model(config.student_model, splits.input_shape, splits.num_classes)
    model.load_state_dict(global_state)
    x, y = splits.client(partition_id)
    t0 = time.perf_counter()
    loss = distill.train_supervised(model, x, y, distill.Schedule.local(config),
                                    generator=generator(config.seed, "fedavg", partition_id, server_round),
                                    device=device)["loss"]
    metrics = {
        "partition-id": float(partition_id),
        "num-examples": float(len(y)),
        "train-loss": loss,
        "train-seconds": time.perf_counter() - t0,
    }
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, metrics
