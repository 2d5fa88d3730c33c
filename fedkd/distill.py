"""Knowledge-distillation maths and the torch loops that use it.

Owns: tempered softmax, the KD and logit-matching losses, the sum-compatible ensemble rules
(what a client uploads, and how the server turns the sum back into a teacher), the supervised
and distillation training loops, prediction, and the evaluation metrics (accuracy, NLL, ECE).
Must not touch: Flower, files, or how vectors are summed (that is `fedkd.aggregate`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd import optim
from fedkd.config import OPTIMIZERS

# Log-probabilities are floored before upload so every rule sends finite, bounded numbers
# (a fixed-point encoder for secure aggregation needs a clip range; e^-30 is far below float32 noise).
LOG_PROB_FLOOR = -30.0


# ---- losses -----------------------------------------------------------------------------------

def softmax_t(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(z / T) along the class axis: T > 1 softens, T < 1 sharpens."""
    return torch.softmax(logits / temperature, dim=-1)


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft-target distillation loss of Hinton, Vinyals & Dean (2015), "Distilling the Knowledge
    in a Neural Network":

        L = T^2 * KL(p_teacher^T || p_student^T),   p^T = softmax(z / T),

    averaged over the batch (`reduction="batchmean"`, the true KL per example; "mean" would also
    divide by the number of classes). The T^2 factor keeps the gradient scale fixed as T grows,
    since d/dz of the tempered KL shrinks as 1/T^2.

    student_logits: (B, K); teacher_probs: (B, K), rows summing to 1, already at temperature T.
    """
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    return temperature**2 * F.kl_div(log_student, teacher_probs, reduction="batchmean")


def logit_matching_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Logit regression of Ba & Caruana (2014), "Do Deep Nets Really Need to be Deep?":

        L = 1/B * sum_i ||z_student_i - z_teacher_i||^2 / K   (mean squared error over logits)

    the high-temperature limit of the KD loss; used with the mean-of-logits ensemble.
    student_logits, teacher_logits: (B, K).
    """
    return F.mse_loss(student_logits, teacher_logits)


# ---- ensemble rules ---------------------------------------------------------------------------
# Each rule is sum-compatible: a client uploads payload(z); the server only ever needs
# sum_i payload(z_i) and the count n to build the teacher, so a secure sum can sit in between.

@dataclass(frozen=True)
class Teacher:
    """The ensemble teacher on some examples: `values` are probabilities at the distillation
    temperature (kind "probs") or mean logits (kind "logits"); `temperature` is the one the
    student must be matched at."""

    values: np.ndarray  # (N, K) float32
    kind: str
    temperature: float

    def predictions(self) -> np.ndarray:  # (N,) class ids
        return self.values.argmax(axis=1)


def client_payload(
    logits: np.ndarray, rule: str, temperature: float, class_weights: np.ndarray | None = None,
    example_weights: np.ndarray | None = None,
) -> np.ndarray:
    """What one client uploads for `rule`, from its teacher's logits (N, K) -> (N, K) float32.

    mean, dsfl: softmax(z/T); geometric: log softmax(z/T) floored at LOG_PROB_FLOOR; logits: z.
    For mean and dsfl only, `class_weights` (K,) scales the client's vote for each class
    (w_c * p_c) and `example_weights` (N,) its vote on each example (w(x) * p(x)). The client
    uploads the weights too, and the server divides the two sums (`combine`'s `weights`), so the
    weighted mean stays sum-compatible and passes through secure aggregation.
    """
    if (class_weights is not None or example_weights is not None) and rule not in ("mean", "dsfl"):
        raise ValueError(f"class weights apply to the mean and dsfl rules, not '{rule}'")
    z = torch.as_tensor(logits, dtype=torch.float64)
    if rule in ("mean", "dsfl"):
        out = softmax_t(z, temperature)
        if class_weights is not None:
            out = out * torch.as_tensor(class_weights, dtype=torch.float64)
        if example_weights is not None:
            out = out * torch.as_tensor(example_weights, dtype=torch.float64)[:, None]
    elif rule == "geometric":
        out = torch.clamp(F.log_softmax(z / temperature, dim=-1), min=LOG_PROB_FLOOR)
    elif rule == "logits":
        out = z
    else:
        raise ValueError(f"ensemble rule '{rule}' is unknown; choose one of mean, geometric, logits, dsfl")
    return out.to(torch.float32).numpy()


def confidence(logits: np.ndarray, scheme: str) -> np.ndarray:
    """(N,) float32 in [0, 1]: how sure a teacher is of each example, from its logits (N, K) at
    temperature 1, for confidence-weighted ensembles (clients upload w(x) * p(x) and w(x)).

    max-prob: max_c softmax(z)_c, the confidence of the predicted class (the certainty signal of
              Hendrycks & Gimpel 2017, used to weight ensemble members e.g. in FedDF-style fusion);
    entropy:  1 - H(softmax(z)) / log K, one minus the normalised entropy (DS-FL's entropy view,
              Itahara et al. 2021, applied per client before the sum rather than after it).
    """
    p = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=-1)
    if scheme == "max-prob":
        w = p.max(dim=-1).values
    elif scheme == "entropy":
        k = p.shape[-1]
        w = 1.0 - (-(p * p.clamp(min=1e-12).log()).sum(dim=-1)) / math.log(k) if k > 1 else torch.ones(len(p))
    else:
        raise ValueError(f"confidence scheme '{scheme}' is unknown; choose max-prob or entropy")
    return w.clamp(0.0, 1.0).to(torch.float32).numpy()


def combine(total: np.ndarray, count: int, rule: str, temperature: float, era_temperature: float = 0.1,
            weights: np.ndarray | None = None) -> Teacher:
    """The ensemble teacher from the sum of `count` client payloads, total: (N, K).

    mean:      (1/n) sum p_i^T                                   (arithmetic mean of probabilities)
    geometric: softmax((1/n) sum log p_i^T)                      (normalised geometric mean)
    logits:    (1/n) sum z_i                                     (matched by logit regression)
    dsfl:      softmax(((1/n) sum p_i^T) / T_era), T_era < 1     (entropy reduction of DS-FL,
               Itahara et al. 2021; the student is matched at temperature 1). DS-FL averages
               plain softmax outputs: use temperature 1 to match the paper; with T > 1 the
               clients' outputs are softened before the sharpening.

    `weights` (mean and dsfl only): the secure sum of the clients' vote weights, (1, K) per class
    or (N, 1) per example, when each client uploaded w * p (`client_payload`'s `weights`). The
    teacher is then the weighted mean sum_i w_i p_i / sum_i w_i, taken per class or per example
    before the rows are renormalised; a class (or example) nobody voted for gets the plain
    renormalised sum's share, 0. Without `weights`, the weighted sum is only renormalised per row.
    """
    if count <= 0:
        raise ValueError("cannot build an ensemble teacher from zero contributors")
    mean = torch.as_tensor(total, dtype=torch.float64) / count
    if weights is not None:
        if rule not in ("mean", "dsfl"):
            raise ValueError(f"vote weights apply to the mean and dsfl rules, not '{rule}'")
        w = torch.as_tensor(weights, dtype=torch.float64) / count
        if w.dim() != 2 or w.shape not in ((1, mean.shape[1]), (mean.shape[0], 1)):
            raise ValueError(f"weights of shape {tuple(w.shape)} are neither (1, K) per class nor (N, 1) per "
                             f"example for a sum of shape {tuple(mean.shape)}")
        mean = torch.where(w > 0, mean / w.clamp(min=1e-12), torch.zeros_like(mean))
    if rule in ("mean", "dsfl"):
        mean = mean.clamp(min=0.0)  # fixed-point decoding can leave -1e-9 where a probability was 0
        # a row that DP noise drove to all zeros carries no vote: make it uniform, not 0/0
        empty = mean.sum(dim=1) <= 0
        mean[empty] = 1.0
    if rule == "mean":
        values, kind, t = mean / mean.sum(dim=1, keepdim=True), "probs", temperature
    elif rule == "geometric":
        values, kind, t = torch.softmax(mean, dim=1), "probs", temperature
    elif rule == "logits":
        values, kind, t = mean, "logits", temperature
    elif rule == "dsfl":
        mean = mean / mean.sum(dim=1, keepdim=True)
        values, kind, t = torch.softmax(mean / era_temperature, dim=1), "probs", 1.0
    else:
        raise ValueError(f"ensemble rule '{rule}' is unknown; choose one of mean, geometric, logits, dsfl")
    return Teacher(values.to(torch.float32).numpy(), kind, t)


def extrapolate(teacher: Teacher, student_logits: np.ndarray, step: float) -> Teacher:
    """The server's step in function space from its student towards the ensemble, (N, K) rows:

        target = softmax(log p_s + step * (log p_e - log p_s)),   p_s = softmax(z_s / T)

    with p_e the ensemble teacher's probabilities at its temperature T and z_s (N, K) the
    student's logits on the same inputs. step 1 returns the ensemble; step > 1 goes past it, as
    FedExP extrapolates FedAvg's averaged update in weight space (Jhunjhunwala, Wang & Joshi,
    "FedExP: Speeding Up Federated Averaging via Extrapolation", ICLR 2023; a server learning
    rate > 1, Reddi et al. 2021). Only the sum and the server's own model enter: nothing more leaves a
    client. Probabilities are floored at e^LOG_PROB_FLOOR before the logarithm."""
    if teacher.kind != "probs":
        raise ValueError(f"extrapolation steps between probabilities; a '{teacher.kind}' teacher has none")
    if step == 1:
        return teacher
    log_s = F.log_softmax(torch.as_tensor(student_logits, dtype=torch.float64) / teacher.temperature, dim=1)
    log_e = torch.as_tensor(teacher.values, dtype=torch.float64).clamp(min=math.exp(LOG_PROB_FLOOR)).log()
    target = torch.softmax(log_s + step * (log_e - log_s), dim=1)
    return Teacher(target.to(torch.float32).numpy(), teacher.kind, teacher.temperature)


# ---- loops ------------------------------------------------------------------------------------

MIN_VAL_EXAMPLES = 10  # smallest validation slice early stopping may trust
MAX_RECOVERIES = 4  # a diverged epoch is retried from its last finite weights at half the rate, this many times


@dataclass(frozen=True)
class Schedule:
    """How one training loop runs: a client's local training, its digest of the consensus, the
    server's distillation or the central baseline. `phase` and `setting` only name things in a
    `DivergedError` (what diverged, which option to lower)."""

    epochs: int
    lr: float
    batch_size: int
    optimizer: str = "sgd"
    val_fraction: float = 0.0  # distill only: share of x held out to stop early on
    patience: int = 0  # distill only: epochs without a better validation loss before stopping
    phase: str = "local training"
    setting: str = "lr"
    clip_norm: float = 0.0  # > 0: each step's gradient is scaled down to at most this L2 norm
    # distill only: images in channels-last layout during the loop (the server's distillation: a
    # quarter less CPU per epoch; a client's digest keeps the usual layout, which the stacked engine
    # reproduces within rounding)
    channels_last: bool = False

    @classmethod
    def local(cls, config, phase: str = "local training") -> Schedule:
        """Supervised training on private data (clients, FedAvg, the central baseline)."""
        return cls(config.local_epochs, config.lr, config.batch_size, phase=phase, clip_norm=config.clip_norm)

    @classmethod
    def digest(cls, config, phase: str) -> Schedule:
        """A teacher learning last round's consensus: the distillation rates, every epoch run."""
        return cls(config.digest_epochs, config.distill_lr, config.distill_batch_size, config.distill_optimizer,
                   patience=config.patience, phase=phase, setting="distill-lr")

    @classmethod
    def server(cls, config) -> Schedule:
        """The server distilling the student from the ensemble teacher, with early stopping."""
        return cls(config.distill_epochs, config.distill_lr, config.distill_batch_size, config.distill_optimizer,
                   config.val_fraction, config.patience, phase="server distillation", setting="distill-lr",
                   channels_last=True)


@dataclass(frozen=True)
class JointTerm:
    """The consensus term of joint local training: public inputs x (M, *shape), the consensus's
    targets on them (the ensemble teacher's, or with server-step the stepped target), and the
    weight w of KD(public; consensus) beside CE(private)."""

    x: np.ndarray
    teacher: Teacher
    weight: float


class DivergedError(RuntimeError):
    """Training kept producing a non-finite loss, weights or logits after MAX_RECOVERIES restarts at
    ever smaller rates. The message names the phase and the setting to change."""


def _tensor(a: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    # np.array copies: cached dataset arrays are read-only and torch wants writable memory.
    return torch.as_tensor(np.array(a), dtype=dtype, device=device)


def make_optimizer(name: str, params, lr: float) -> optim.SGD | optim.Adam:
    """sgd: momentum 0.9 and weight decay 5e-4 (the usual small-CNN recipe); adam: Kingma & Ba
    (2015) with its default betas. Adam scales each step by a running estimate of the gradient's
    size, so the same rate serves losses whose gradients differ by a constant factor (the KD
    loss's gradient in the logits is T * (p_student - p_teacher), T times that of cross-entropy).
    `fedkd.optim`'s, equal step for step to torch.optim's, without its 1.9 s import per process."""
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    if name == "adam":
        return optim.Adam(params, lr=lr)
    raise ValueError(f"optimizer '{name}' is unknown; choose one of {', '.join(OPTIMIZERS)}")


def _finite_weights(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.state_dict().values() if p.is_floating_point())


def _finite_outputs(model: nn.Module, inputs: list[torch.Tensor], batch_size: int = 1024) -> bool:
    """Whether the model, in eval mode, maps every input to finite logits. Finite weights can still
    be large enough to overflow the logits (seen once on 28x28 inputs at lr 0.05): the client would
    then release NaN predictions, which the sum refuses."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return all(bool(torch.isfinite(model(x[i : i + batch_size])).all())
                       for x in inputs for i in range(0, len(x), batch_size))
    finally:
        model.train(was_training)


class _Guard:
    """The weights to fall back on and the rate in force. It starts with the weights the loop
    was handed; a loop may `keep()` better ones (a new best on validation). When an epoch meets a
    non-finite loss or leaves non-finite weights, `recover()` restores the kept weights, halves
    the rate and starts the optimiser afresh (its moments may hold the overflow). Not the
    epoch's own start: a step can leave huge but finite weights that overflow one epoch later.
    Past MAX_RECOVERIES it raises DivergedError."""

    def __init__(self, model: nn.Module, schedule: Schedule):
        self.model, self.optimizer_name, self.lr = model, schedule.optimizer, schedule.lr
        self.phase, self.setting, self.first_lr = schedule.phase, schedule.setting, schedule.lr
        self.recoveries, self.clip_norm = 0, schedule.clip_norm
        self.optimizer = make_optimizer(self.optimizer_name, model.parameters(), self.lr)
        self._good = copy.deepcopy(model.state_dict())

    def keep(self, state: dict[str, torch.Tensor]) -> None:
        self._good = state

    def recover(self) -> None:
        self.recoveries += 1
        if self.recoveries > MAX_RECOVERIES:
            raise DivergedError(
                f"{self.phase} diverged (non-finite loss, weights or logits) {MAX_RECOVERIES + 1} times, the last at "
                f"{self.setting}={self.lr:g} (set {self.first_lr:g}); lower {self.setting}")
        self.model.load_state_dict(self._good)
        self.lr /= 2
        self.optimizer = make_optimizer(self.optimizer_name, self.model.parameters(), self.lr)


def _epoch(guard: _Guard, batches, loss_of) -> float | None:
    """One pass over `batches` (index tensors), each step's gradient clipped to the guard's
    clip_norm when it is > 0; the mean loss, or None at the first non-finite loss (the step is
    not taken). loss_of(idx) -> scalar tensor."""
    total, seen = 0.0, 0
    for idx in batches:
        loss = loss_of(idx)
        if not torch.isfinite(loss):
            return None
        guard.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if guard.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(guard.model.parameters(), guard.clip_norm)
        guard.optimizer.step()
        total, seen = total + loss.item() * len(idx), seen + len(idx)
    if not _finite_weights(guard.model):
        return None
    return total / max(seen, 1)


def train_supervised(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    schedule: Schedule,
    *,
    generator: torch.Generator,
    device: torch.device,
    joint: JointTerm | None = None,
) -> dict[str, float]:
    """Cross-entropy training over shuffled mini-batches, as `schedule` says. x: (N, *shape), y: (N,).

    With a `joint` term (the ensemble teacher on public inputs) of weight w > 0, every private batch is joined by a batch of as many public examples,
    drawn uniformly, and the loss is CE(private) + w * KD(public; consensus): joint training on
    private labels and on the federation's soft labels for public data, as in Cronus (Chang et
    al. 2019, "Cronus: Robust and Heterogeneous Collaborative Learning with Black-Box Knowledge
    Transfer"). Unlike a digest before local training (FedMD), the consensus keeps pulling while
    the private data pull, so a client that holds few classes does not forget the others.

    With `schedule.clip_norm` > 0 each step's gradient is scaled down to at most that L2 norm
    (`clip-norm`): a teacher started from the student at a rate fit for training from scratch
    otherwise collapsed (fashion3615, alpha 0.1, round 2: the ensemble fell to 0.444).

    A non-finite loss or weights, or after the last epoch non-finite logits (on x, and on the
    public inputs with the consensus term: the weights are finite, yet a release would be NaN),
    restarts training from the weights it was handed at half the rate (at most MAX_RECOVERIES
    times; then DivergedError names `phase` and `setting`). With clipping, steps are bounded, so
    a far too high rate may end finite and useless rather than diverge: the reported train loss
    and teacher accuracy show it.
    Returns {"loss": the last epoch's mean loss (nan when epochs == 0), "recoveries", "lr": the
    rate in force at the end}.
    """
    model.to(device).train()
    xt, yt = _tensor(x, device), _tensor(y, device, torch.long)
    if joint is not None and joint.weight <= 0:
        joint = None
    if joint is not None:
        px, pt = _tensor(joint.x, device), _tensor(joint.teacher.values, device)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(xt[idx]), yt[idx])
        if joint is not None:
            j = torch.randint(len(px), (len(idx),), generator=generator).to(device)
            loss = loss + joint.weight * distillation_loss(model(px[j]), pt[j], joint.teacher)
        return loss

    guard = _Guard(model, schedule)
    last, done = float("nan"), 0
    while done < schedule.epochs:
        batches = (i.to(device) for i in torch.randperm(len(xt), generator=generator).split(schedule.batch_size))
        loss = _epoch(guard, batches, loss_of)
        last_epoch = done + 1 == schedule.epochs
        if loss is not None and last_epoch and not _finite_outputs(model, [xt] if joint is None else [xt, px]):
            loss = None  # the weights to be released are finite but overflow: the same recovery
        if loss is None:
            guard.recover()
            done = 0  # from the first weights again, so every epoch counts at the new rate
            continue
        last, done = loss, done + 1
    return {"loss": last, "recoveries": float(guard.recoveries), "lr": guard.lr}


def distillation_loss(
    student_logits: torch.Tensor,
    target: torch.Tensor,
    teacher: Teacher,
    labels: torch.Tensor | None = None,
    hard_label_weight: float = 0.0,
) -> torch.Tensor:
    """The server's objective on one batch: KD (or logit matching) plus an optional hard-label term."""
    if teacher.kind == "logits":
        loss = logit_matching_loss(student_logits, target)
    else:
        loss = kd_loss(student_logits, target, teacher.temperature)
    if labels is not None and hard_label_weight > 0:
        loss = loss + hard_label_weight * F.cross_entropy(student_logits, labels)
    return loss


def _holdout(n: int, fraction: float, generator: torch.Generator, groups: np.ndarray | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation, training) row indices of n rows: a `fraction` slice of the rows, or with
    `groups` (n,) of the groups, each held out whole; no validation slice when it would hold fewer
    than MIN_VAL_EXAMPLES rows or groups (a loss on a handful of examples is noise: stopping on it
    undertrains)."""
    ids = None if groups is None else np.unique(groups)
    units = n if ids is None else len(ids)
    order = torch.randperm(units, generator=generator)
    n_val = int(round(units * fraction)) if fraction > 0 else 0
    if n_val < MIN_VAL_EXAMPLES:
        n_val = 0
    if ids is None:
        return order[:n_val], order[n_val:]
    held = np.isin(groups, ids[order[:n_val].numpy()])
    return torch.as_tensor(np.flatnonzero(held)), torch.as_tensor(np.flatnonzero(~held))


def distill(
    model: nn.Module,
    x: np.ndarray,
    teacher: Teacher,
    schedule: Schedule,
    *,
    generator: torch.Generator,
    device: torch.device,
    labels: np.ndarray | None = None,
    hard_label_weight: float = 0.0,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Train `model` (warm: whatever weights it has) to match `teacher` on x: (N, *shape).

    A `schedule.val_fraction` slice of x is held out (none if it would hold fewer than
    MIN_VAL_EXAMPLES: then all epochs run); with `groups` (N,), the example each row is a view
    of, the slice is of examples, every row of a held-out example with it, so that no view of a
    validation example trains the model. Training stops after `schedule.patience` epochs
    without improvement of the
    distillation loss on it (without the hard-label term). The best weights are restored, and
    the weights the model came in with count as a candidate (epoch 0): a round never leaves the
    model with a worse validation loss than it started with. The slice is scored against the
    teacher, not labels: the server has no labels for the public set.
    A non-finite loss or weights sends the model back to its best weights so far (those it came
    in with when nothing was validated) at half the rate, at most MAX_RECOVERIES times; then
    DivergedError names `phase` and `setting`.
    Returns {"epochs" (run, best included), "train_loss", "val_loss", "recoveries", "lr" (at the end)}.
    """
    # with `schedule.channels_last`, images in channels-last layout (N, H, W, C in memory): the
    # convolutions' CPU time per epoch fell by about a quarter (fashion CNN and ResNet-8, one
    # thread; docs/results.md); the model leaves in the usual layout
    layout = torch.channels_last if schedule.channels_last and np.ndim(x) == 4 else torch.contiguous_format
    model.to(device, memory_format=layout)
    val_idx, train_idx = _holdout(len(x), schedule.val_fraction, generator, groups)
    n_val, val_idx = len(val_idx), val_idx.to(device)
    xt, tt = _tensor(x, device).contiguous(memory_format=layout), _tensor(teacher.values, device)
    yt = _tensor(labels, device, torch.long) if labels is not None else None

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return distillation_loss(model(xt[idx]), tt[idx], teacher, yt[idx] if yt is not None else None,
                                 hard_label_weight)

    def val_loss() -> float:
        model.eval()
        with torch.inference_mode():
            return float(distillation_loss(model(xt[val_idx]), tt[val_idx], teacher))

    guard = _Guard(model, schedule)
    best, best_state, stale, epoch, train_loss = float("inf"), None, 0, 0, float("nan")
    if n_val:
        start = val_loss()
        if math.isfinite(start):  # the weights the round started from: kept unless training beats them
            best, best_state = start, copy.deepcopy(model.state_dict())
    while epoch < schedule.epochs:
        model.train()
        shuffled = train_idx[torch.randperm(len(train_idx), generator=generator)]
        loss = _epoch(guard, (i.to(device) for i in shuffled.split(schedule.batch_size)), batch_loss)
        if loss is None:
            guard.recover()
            if n_val == 0:  # back at the first weights (nothing was validated): every epoch again
                epoch = 0
            continue
        epoch, train_loss = epoch + 1, loss
        if n_val == 0:
            continue
        val = val_loss()
        if val < best - 1e-6:
            best, best_state, stale = val, copy.deepcopy(model.state_dict()), 0
            guard.keep(best_state)
        else:
            stale += 1
            if stale >= schedule.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format)
    return {"epochs": float(epoch), "train_loss": train_loss, "val_loss": best if n_val else float("nan"),
            "recoveries": float(guard.recoveries), "lr": guard.lr}


def predict_logits(model: nn.Module, x: np.ndarray, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    """Logits (N, K) float32, batched, under inference mode."""
    model.to(device).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out.append(model(_tensor(x[start : start + batch_size], device)).float().cpu())
    return torch.cat(out).numpy()


# ---- metrics ----------------------------------------------------------------------------------

def accuracy(probs_or_logits: np.ndarray, y: np.ndarray) -> float:
    return float((probs_or_logits.argmax(axis=1) == y).mean())


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over equal-width confidence bins of |acc(bin) - conf(bin)| * n_bin / N.

    probs: (N, K) rows summing to 1; y: (N,). A bin holds confidences in (lo, hi].
    """
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += abs(correct[in_bin].mean() - conf[in_bin].mean()) * in_bin.mean()
    return float(ece)


def learnt_nothing(logits: np.ndarray, y: np.ndarray) -> bool:
    """Whether a model's logits (N, K) on its own training data, labels y (N,), predict them no
    better than the labels' own class shares q would: mean cross-entropy >= H(q), the
    cross-entropy of always answering q. Training that worked sits far below that line; a model
    that collapsed onto one class (confidently wrong on the rest) or never left chance sits on or
    above it. This is how clipped steps at a far too high rate fail: they stay finite, so the
    divergence guard never fires. False for data of a single class: there is nothing to beat.
    Labels must lie in 0..K-1 (the data loaders check it)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64))
    q = counts[counts > 0] / len(y)
    if len(q) < 2:
        return False
    entropy = float(-(q * np.log(q)).sum())  # nats; the shares' own cross-entropy
    z = torch.as_tensor(logits, dtype=torch.float64)
    ce = float(F.cross_entropy(z, torch.as_tensor(np.array(y), dtype=torch.long)))
    return ce >= entropy


def evaluate_logits(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, negative log-likelihood (nats per example) and 15-bin ECE of logits (N, K)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    nll = float(F.cross_entropy(z, torch.as_tensor(np.array(y), dtype=torch.long)))
    probs = torch.softmax(z, dim=1).numpy()
    return {"accuracy": accuracy(probs, y), "nll": nll, "ece": expected_calibration_error(probs, y)}
