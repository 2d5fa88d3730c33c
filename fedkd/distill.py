"""Knowledge-distillation maths and the torch loops that use it.

Owns: tempered softmax, the KD and logit-matching losses, the sum-compatible ensemble rules
(what a client uploads, and how the server turns the sum back into a teacher), the supervised
and distillation training loops, prediction, and the evaluation metrics (accuracy, NLL, ECE).
Must not touch: Flower, files, or how vectors are summed (that is `fedkd.aggregate`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
    logits: np.ndarray, rule: str, temperature: float, class_weights: np.ndarray | None = None
) -> np.ndarray:
    """What one client uploads for `rule`, from its teacher's logits (N, K) -> (N, K) float32.

    mean, dsfl: softmax(z/T); geometric: log softmax(z/T) floored at LOG_PROB_FLOOR; logits: z.
    `class_weights` (K,), for mean and dsfl only, scales the client's vote for each class
    (w_c * p_c); the server renormalises each row after the sum, so the rule stays sum-compatible.
    """
    if class_weights is not None and rule not in ("mean", "dsfl"):
        raise ValueError(f"class weights apply to the mean and dsfl rules, not '{rule}'")
    z = torch.as_tensor(logits, dtype=torch.float64)
    if rule in ("mean", "dsfl"):
        out = softmax_t(z, temperature)
        if class_weights is not None:
            out = out * torch.as_tensor(class_weights, dtype=torch.float64)
    elif rule == "geometric":
        out = torch.clamp(F.log_softmax(z / temperature, dim=-1), min=LOG_PROB_FLOOR)
    elif rule == "logits":
        out = z
    else:
        raise ValueError(f"ensemble rule '{rule}' is unknown; choose one of mean, geometric, logits, dsfl")
    return out.to(torch.float32).numpy()


def combine(total: np.ndarray, count: int, rule: str, temperature: float, era_temperature: float = 0.1) -> Teacher:
    """The ensemble teacher from the sum of `count` client payloads, total: (N, K).

    mean:      (1/n) sum p_i^T                                   (arithmetic mean of probabilities)
    geometric: softmax((1/n) sum log p_i^T)                      (normalised geometric mean)
    logits:    (1/n) sum z_i                                     (matched by logit regression)
    dsfl:      softmax(((1/n) sum p_i^T) / T_era), T_era < 1     (entropy reduction of DS-FL,
               Itahara et al. 2021; the student is matched at temperature 1). DS-FL averages
               plain softmax outputs: use temperature 1 to match the paper; with T > 1 the
               clients' outputs are softened before the sharpening.
    """
    if count <= 0:
        raise ValueError("cannot build an ensemble teacher from zero contributors")
    mean = torch.as_tensor(total, dtype=torch.float64) / count
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


# ---- loops ------------------------------------------------------------------------------------

MIN_VAL_EXAMPLES = 10  # smallest validation slice early stopping may trust


def _tensor(a: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    # np.array copies: cached dataset arrays are read-only and torch wants writable memory.
    return torch.as_tensor(np.array(a), dtype=dtype, device=device)


def train_supervised(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    """Cross-entropy training with SGD (momentum 0.9) over shuffled mini-batches; returns the last
    epoch's mean loss (nan when epochs == 0). x: (N, *shape), y: (N,)."""
    model.to(device).train()
    xt, yt = _tensor(x, device), _tensor(y, device, torch.long)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    last = float("nan")
    for _ in range(epochs):
        total, seen = 0.0, 0
        for idx in torch.randperm(len(xt), generator=generator).split(batch_size):
            idx = idx.to(device)
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        last = total / max(seen, 1)
    return last


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


def distill(
    model: nn.Module,
    x: np.ndarray,
    teacher: Teacher,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    val_fraction: float,
    patience: int,
    generator: torch.Generator,
    device: torch.device,
    labels: np.ndarray | None = None,
    hard_label_weight: float = 0.0,
) -> dict[str, float]:
    """Train `model` (warm: whatever weights it has) to match `teacher` on x: (N, *shape).

    A `val_fraction` slice of x is held out (none if it would hold fewer than MIN_VAL_EXAMPLES:
    then all epochs run), and training stops after `patience` epochs without
    improvement of the distillation loss on it (without the hard-label term); the best weights
    are restored. "epochs" in the result counts the epochs run, best included. The slice is scored against
    the teacher, not labels: the server has no labels for the public set.
    Returns {"epochs", "train_loss", "val_loss"}.
    """
    model.to(device)
    n = len(x)
    order = torch.randperm(n, generator=generator)
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    if n_val < MIN_VAL_EXAMPLES:  # a loss on a handful of examples is noise: stopping on it undertrains
        n_val = 0
    val_idx, train_idx = order[:n_val].to(device), order[n_val:]
    xt, tt = _tensor(x, device), _tensor(teacher.values, device)
    yt = _tensor(labels, device, torch.long) if labels is not None else None
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    best, best_state, stale, epoch, train_loss = float("inf"), None, 0, 0, float("nan")
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for idx in train_idx[torch.randperm(len(train_idx), generator=generator)].split(batch_size):
            idx = idx.to(device)
            loss = distillation_loss(model(xt[idx]), tt[idx], teacher, yt[idx] if yt is not None else None, hard_label_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        train_loss = total / max(len(train_idx), 1)
        if n_val == 0:
            continue
        model.eval()
        with torch.inference_mode():
            val = float(distillation_loss(model(xt[val_idx]), tt[val_idx], teacher))
        if val < best - 1e-6:
            best, best_state, stale = val, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"epochs": float(epoch), "train_loss": train_loss, "val_loss": best if n_val else float("nan")}


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


def evaluate_logits(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, negative log-likelihood (nats per example) and 15-bin ECE of logits (N, K)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    nll = float(F.cross_entropy(z, torch.as_tensor(np.array(y), dtype=torch.long)))
    probs = torch.softmax(z, dim=1).numpy()
    return {"accuracy": accuracy(probs, y), "nll": nll, "ece": expected_calibration_error(probs, y)}
