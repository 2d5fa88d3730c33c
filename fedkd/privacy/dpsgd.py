"""DP-SGD teachers through Opacus: record-level differential privacy, applied locally on each
client, the alternative to distributed DP on the released sum.

Owns: training one teacher with DP-SGD (per-example gradient clipping to `max_grad_norm`,
Gaussian noise of std `noise_multiplier * max_grad_norm`, Poisson-sampled batches; Abadi et al.
2016, "Deep Learning with Differential Privacy"), the client's accounting history across rounds
and its epsilon (Opacus' RDP accountant, Mironov et al. 2019 for the subsampled Gaussian), and
the check that a model is fit for per-example gradients. Must not touch: Flower, files, the
distributed mechanism (`fedkd.privacy.mechanism`).

The guarantee is per client and per record: neighbouring datasets differ in one of that
client's private examples, and it covers everything computed from the teacher afterwards
(predictions, digest steps, later rounds: post-processing), composed over every round the
client trains. The digest step trains on public inputs only and costs nothing. Opacus is an
optional dependency: `pip install "fedkd[dpsgd]"`.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd.distill import DivergedError, Schedule
from fedkd.privacy.mechanism import PrivacyError

# One accounting event of Opacus' RDP accountant: (noise multiplier, sample rate, steps).
Event = tuple[float, float, int]


def _opacus():
    try:
        import opacus
    except ImportError:
        raise PrivacyError("teacher-dp-noise-multiplier needs Opacus: pip install \"fedkd[dpsgd]\" "
                           "(or pip install opacus)") from None
    return opacus


def check_model(model: nn.Module, name: str) -> None:
    """Refuse a model whose layers have no per-example gradients (BatchNorm mixes examples)."""
    _opacus()
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        reason = str(errors[0]).split(". ")[0]  # Opacus explains at length; its first sentence names the layer
        raise PrivacyError(f"teacher model '{name}' cannot be trained with DP-SGD ({reason}); use mlp or cnn")


def epsilon(history: tuple[Event, ...] | list[Event], delta: float) -> float:
    """Epsilon at `delta` of every DP-SGD step in `history` (inf for noise 0, 0 for no steps)."""
    _opacus()
    from opacus.accountants import RDPAccountant

    if not history:
        return 0.0
    if any(noise <= 0 for noise, _, _ in history):
        return float("inf")
    accountant = RDPAccountant()
    accountant.history = [tuple(event) for event in history]
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True)
class DPSGDResult:
    loss: float  # last epoch's mean training loss
    history: tuple[Event, ...]  # every event so far, this round's appended
    epsilon: float  # at the delta asked for, over the whole history


@dataclass(frozen=True)
class Noise:
    """DP-SGD's privacy settings: Gaussian noise of std noise_multiplier * max_grad_norm on the
    sum of per-example gradients clipped to max_grad_norm; epsilon is reported at `delta`."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float

    @classmethod
    def from_config(cls, config) -> Noise:
        return cls(config.teacher_dp_noise_multiplier, config.teacher_dp_max_grad_norm, config.teacher_dp_delta)


def train(
    model: nn.Module, x: np.ndarray, y: np.ndarray, schedule: Schedule, noise: Noise, *,
    device: torch.device, history: tuple[Event, ...] = (),
) -> DPSGDResult:
    """DP-SGD (SGD, momentum 0.9, at `schedule.lr`) on (x, y) for `schedule.epochs` passes of
    Poisson-sampled batches with expected size `schedule.batch_size`; `model` gets the trained
    weights. x: (N, *shape), y: (N,).

    Batch sampling and noise draw from the OS's entropy, not the run seed: the server knows the
    seed, and the guarantee assumes it cannot predict either."""
    opacus = _opacus()
    if len(x) == 0:
        raise PrivacyError("DP-SGD needs at least one private example")
    private = copy.deepcopy(model).to(device).train()  # Opacus adds hooks; the caller's model stays clean
    data = torch.utils.data.TensorDataset(
        torch.as_tensor(np.array(x), dtype=torch.float32, device=device),
        torch.as_tensor(np.array(y), dtype=torch.long, device=device),
    )
    loader = torch.utils.data.DataLoader(data, batch_size=min(schedule.batch_size, len(x)),
                                         generator=torch.Generator().manual_seed(secrets.randbits(63)))
    optimizer = torch.optim.SGD(private.parameters(), lr=schedule.lr, momentum=0.9)
    engine = opacus.PrivacyEngine(accountant="rdp")
    noise_gen = torch.Generator(device=device).manual_seed(secrets.randbits(63))
    private, optimizer, loader = engine.make_private(
        module=private, optimizer=optimizer, data_loader=loader, noise_multiplier=noise.noise_multiplier,
        max_grad_norm=noise.max_grad_norm, poisson_sampling=True, noise_generator=noise_gen,
    )
    last = float("nan")
    for _ in range(schedule.epochs):
        total, seen = 0.0, 0
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            if len(xb) == 0:  # Poisson sampling can draw an empty batch: a step of noise alone, counted
                F.cross_entropy(private(xb), yb, reduction="sum").backward()  # 0, with empty per-example grads
                optimizer.step()
                continue
            loss = F.cross_entropy(private(xb), yb)
            if not torch.isfinite(loss):
                # no restart at a lower rate here: every step, the failed ones too, is already
                # spent privacy (the accountant has counted it); stop and say what to change
                raise DivergedError(f"DP-SGD local training diverged (non-finite loss) at lr={schedule.lr:g}; lower lr")
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(xb), seen + len(xb)
        last = total / seen if seen else last
    model.load_state_dict(private._module.state_dict())
    merged = _merge(tuple(history) + tuple(engine.accountant.history))
    return DPSGDResult(last, merged, epsilon(merged, noise.delta))


def _merge(history: tuple[Event, ...]) -> tuple[Event, ...]:
    """Fold events with the same noise and sample rate into one (steps add up): the history that
    crosses rounds in the node's state stays a handful of entries."""
    steps: dict[tuple[float, float], int] = {}
    for noise, rate, n in history:
        steps[(float(noise), float(rate))] = steps.get((float(noise), float(rate)), 0) + int(n)
    return tuple((noise, rate, n) for (noise, rate), n in steps.items())
