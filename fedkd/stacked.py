"""A node's round cohort of teachers of one architecture, trained as one stacked model.

Owns: which of a node's clients train together (`plan`: by architecture, and only where batching
keeps each client's result), the stacked engine (`Stack`: the clients' weights as one set of
(C, *shape) tensors run through `torch.func.vmap`; `StackedOptimizer`; `_Lanes`, the loop that
steps every client at once) and `teacher_rounds`, which does for a group what
`fedkd.task.teacher_round` does for one client, with the same results within float rounding.

Each client keeps everything of its own: its seeded generator, drawn in the same order as the
sequential loops draw it (so its data order, batches and public draws are unchanged), its data
(no client's batch holds another's rows), its rate, optimizer moments, gradient clip, divergence
guard (a restart at half the rate touches its slot only) and its failure. Partitions of unequal
size are padded to the step's largest batch and masked; a client with no batch at a step takes
no step (weights and moments unchanged).

Must not touch: Flower, files, the release rules (`fedkd.task` turns logits into metrics and
vectors) or the sequential loops (`fedkd.distill`: this module mirrors them, it does not change them).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from fedkd import distill, optim
from fedkd.config import Config
from fedkd.models import build_model, resolve

# Memory one chunk of stacked clients may take (weights, gradients, moments, kept weights, and a
# step's activations); on a GPU a quarter of its free memory instead. A cohort larger than what
# fits trains chunk after chunk: clients are independent, so the results do not change.
CPU_BUDGET_BYTES = 512 * 2**20


# ---- which clients stack ------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """A node's cohort split by engine: groups of clients trained together (one architecture each),
    the clients trained one after another, and why each of those is."""

    stacked: tuple[tuple[int, ...], ...]
    sequential: tuple[int, ...]
    reasons: Mapping[int, str]  # partition id -> why it runs sequentially


def stackable(architecture: str, input_shape: tuple[int, ...], num_classes: int, device: torch.device,
              forced: bool = False) -> str | None:
    """None when teachers of `architecture` stack, else why not: a module with buffers (batch
    norm's running statistics) would update them once for all clients under vmap; and on a CPU,
    unless `forced` (cohort-engine stacked), convolutions: vmap turns them into grouped
    convolutions, which this CPU ran 2.7 times slower than the same convolutions one model at a
    time (25 CNNs, a 64-row step, forward and backward; im2col with batched matmuls was slower
    still), so the per-step overhead stacking saves is lost."""
    with torch.random.fork_rng(devices=[]):  # building initialises weights: keep the global stream as it was
        model = build_model(architecture, input_shape, num_classes)
    if any(True for _ in model.buffers()):
        return f"{architecture} has batch-norm statistics, which vmap cannot keep per client"
    if device.type == "cpu" and not forced and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return f"{architecture}'s convolutions run faster one model at a time on a CPU"
    return None


def plan(config: Config, input_shape: tuple[int, ...], num_classes: int, ids, device: torch.device) -> Plan:
    """Which of the clients `ids` train stacked under `cohort-engine`: those of one architecture,
    two or more, without DP-SGD (Opacus clips per example on its own model), where the architecture
    stacks (`stackable`)."""
    ids = tuple(ids)
    if config.cohort_engine == "sequential":
        return Plan((), ids, {pid: "cohort-engine sequential" for pid in ids})
    if config.teacher_dp_enabled:
        return Plan((), ids, {pid: "DP-SGD teachers (Opacus) train one model at a time" for pid in ids})
    by_arch: dict[str, list[int]] = {}
    for pid in ids:
        by_arch.setdefault(resolve(config.teacher_model_for(pid), input_shape), []).append(pid)
    groups, alone, reasons = [], [], {}
    for arch, members in by_arch.items():
        why = stackable(arch, input_shape, num_classes, device, forced=config.cohort_engine == "stacked")
        if why is None and len(members) < 2:
            why = f"the only {arch} client of its node this round"
        if why is None:
            groups.append(tuple(members))
            continue
        alone.extend(members)
        reasons.update({pid: why for pid in members})
    return Plan(tuple(groups), tuple(alone), reasons)


def describe(config: Config, input_shape: tuple[int, ...], num_classes: int, device: torch.device) -> str:
    """What `cohort-engine` resolves to for a node hosting every client, for the run's settings:
    "stacked", "sequential (<why>)", or per architecture when it differs."""
    p = plan(config, input_shape, num_classes, range(config.num_clients), device)
    if not p.sequential:
        return "stacked"
    if not p.stacked:
        return f"sequential ({'; '.join(sorted(set(p.reasons.values())))})"
    parts = [f"stacked for {resolve(config.teacher_model_for(g[0]), input_shape)}" for g in p.stacked]
    return "; ".join(parts + [f"sequential: {why}" for why in sorted(set(p.reasons.values()))])


# ---- the stacked model ------------------------------------------------------------------------

class Stack:
    """C models of one architecture (no buffers) as one: `params` name -> (C, *shape) leaf tensors."""

    def __init__(self, models: list[nn.Module], device: torch.device):
        stacked, _ = stack_module_state(models)
        # stepped in place by `StackedOptimizer`; each step's gradients come from copies (`_Lanes._step`)
        self.params = {k: v.detach().to(device).clone() for k, v in stacked.items()}
        self.base = copy.deepcopy(models[0]).to("meta")  # the function; its weights come from `params`
        self.size = len(models)

    def _call(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, params, (x,))

    def is_whole(self, slots: torch.Tensor) -> bool:
        """Whether `slots` are every slot, in order."""
        return len(slots) == self.size and bool((slots == torch.arange(self.size, device=slots.device)).all())

    def rows(self, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        """The slots' weights (S, *shape): a copy, or `params` itself when `slots` are all of them in order."""
        if self.is_whole(slots):
            return self.params
        return {k: v[slots] for k, v in self.params.items()}

    def forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """(S, B, *shape) inputs, one batch per slot -> (S, B, K) logits."""
        return vmap(self._call)(params, x)

    def forward_shared(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """(B, *shape) inputs seen by every slot -> (S, B, K) logits."""
        return vmap(self._call, in_dims=(0, None))(params, x)

    def state(self, slot: int) -> dict[str, torch.Tensor]:
        """One client's weights as a CPU state dict (parameter names are the state dict's: no buffers)."""
        return {k: v[slot].detach().cpu().clone() for k, v in self.params.items()}


def _per_slot(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(C,) -> (C, 1, ..., 1) to broadcast against a stacked tensor `like` (C, *shape)."""
    return t.view(-1, *([1] * (like.dim() - 1)))


class StackedOptimizer:
    """`fedkd.optim`'s SGD (momentum, weight decay) or Adam over stacked parameters, the settings
    `distill.make_optimizer` gives them: one update for every slot, each with its own rate, moments
    and step count. A slot outside `active` keeps its weights and moments; `reset` gives one slot
    a fresh optimizer at a new rate (the guard's restart)."""

    def __init__(self, name: str, params: list[torch.Tensor], lr: float):
        ref = distill.make_optimizer(name, [torch.zeros(1, requires_grad=True)], lr)
        self.params, c = params, params[0].shape[0]
        device = params[0].device
        self.lr = torch.full((c,), float(lr), dtype=torch.float64, device=device)
        self.adam = isinstance(ref, optim.Adam)
        if self.adam:
            (self.beta1, self.beta2), self.eps = (ref.beta1, ref.beta2), ref.eps
            self.exp_avg = [torch.zeros_like(p) for p in params]
            self.exp_avg_sq = [torch.zeros_like(p) for p in params]
            self.steps = torch.zeros(c, dtype=torch.float64, device=device)
        else:
            self.momentum, self.weight_decay = ref.momentum, ref.weight_decay
            self.buffers = [torch.zeros_like(p) for p in params]  # 0: the first step's m * 0 + g is g

    def reset(self, slot: int, lr: float) -> None:
        self.lr[slot] = lr
        for moments in ((self.exp_avg, self.exp_avg_sq) if self.adam else (self.buffers,)):
            for m in moments:
                m[slot].zero_()
        if self.adam:
            self.steps[slot] = 0

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """One step of every slot where `active` (C,) bool is set, from the parameters' .grad."""
        if self.adam:
            self.steps += active.to(self.steps.dtype)
            t = self.steps.clamp(min=1)  # inactive slots that never stepped: any finite value, discarded
            step_size = (self.lr / (1 - self.beta1 ** t)).float()  # (C,) per slot, as the float torch uses
            bias2_sqrt = ((1 - self.beta2 ** t) ** 0.5).float()
            every = bool(active.all())
            for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
                if every:  # in place, as fedkd.optim.Adam, with each slot's own step size
                    m.lerp_(p.grad, 1 - self.beta1)
                    v.mul_(self.beta2).addcmul_(p.grad, p.grad, value=1 - self.beta2)
                    denom = (v.sqrt() / _per_slot(bias2_sqrt, p)).add_(self.eps)
                    p.sub_(_per_slot(step_size, p) * (m / denom))
                    continue
                keep = _per_slot(active, p)
                g = p.grad
                m_new = m.lerp(g, 1 - self.beta1)
                v_new = torch.addcmul(v * self.beta2, g, g, value=1 - self.beta2)
                denom = v_new.sqrt() / _per_slot(bias2_sqrt, p) + self.eps
                p_new = p - _per_slot(step_size, p) * (m_new / denom)
                m.copy_(torch.where(keep, m_new, m))
                v.copy_(torch.where(keep, v_new, v))
                p.copy_(torch.where(keep, p_new, p))
            return
        lr = self.lr.float()
        every = bool(active.all())
        for p, b in zip(self.params, self.buffers):
            if every:  # in place, as fedkd.optim.SGD, with each slot's own rate
                g = p.grad if self.weight_decay == 0 else p.grad.add_(p, alpha=self.weight_decay)
                if self.momentum != 0:
                    g = b.mul_(self.momentum).add_(g)
                p.addcmul_(_per_slot(lr, p), g, value=-1)
                continue
            keep = _per_slot(active, p)
            g = p.grad if self.weight_decay == 0 else torch.add(p.grad, p, alpha=self.weight_decay)
            b_new = b * self.momentum + g if self.momentum != 0 else g
            p_new = p - _per_slot(lr, p) * b_new
            if self.momentum != 0:
                b.copy_(torch.where(keep, b_new, b))
            p.copy_(torch.where(keep, p_new, p))


def _clip(params: list[torch.Tensor], max_norm: float) -> None:
    """Each slot's gradient scaled down to total L2 norm max_norm, as clip_grad_norm_ does per model."""
    norms = torch.stack([p.grad.flatten(1).norm(dim=1) for p in params], dim=1).norm(dim=1)  # (C,)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(_per_slot(coef, p))


# ---- one training loop over every slot ----------------------------------------------------------

@dataclass
class _Lane:
    """Where one client's loop stands (the sequential loop's locals, one set per client)."""

    pid: int
    slot: int
    generator: torch.Generator
    rows: int  # private examples
    phase: str  # names the loop in a DivergedError
    lr: float = 0.0
    recoveries: int = 0
    epoch: int = 0  # epochs completed at the current rate
    batches: list | None = None  # the current epoch's remaining index batches; None between epochs
    order: torch.Tensor | None = None  # the digest's training rows (distill's holdout, none held out)
    total: float = 0.0
    seen: int = 0
    loss: float = float("nan")  # the last completed epoch's mean loss
    pending: float = float("nan")  # the last epoch's mean loss, until its outputs pass the check
    status: str = "run"  # run, check (last epoch done, outputs to be checked), done, failed
    error: Exception | None = None


@dataclass(frozen=True)
class _Loop:
    """One loop as it runs for every lane: local training (private batches, each joined by as many
    public draws with the consensus term) or the digest (public batches only, as `distill.distill`
    with no validation slice)."""

    schedule: distill.Schedule
    digest: bool
    public: torch.Tensor | None  # (M, *shape) public inputs of the consensus
    targets: torch.Tensor | None  # (M, K) the consensus on them
    teacher: distill.Teacher | None
    weight: float  # of the public term (1 in the digest)


class _Lanes:
    """The stacked clients' loops run together, one step of every running lane at a time."""

    def __init__(self, stack: Stack, lanes: list[_Lane], x: torch.Tensor, y: torch.Tensor,
                 offsets: torch.Tensor, budget: int, act_bytes: int):
        self.stack, self.lanes = stack, lanes  # lanes[slot]
        self.x, self.y, self.offsets = x, y, offsets  # every lane's private rows, concatenated; lane starts (C,)
        self.budget, self.act_bytes = budget, act_bytes  # inference passes take budget // (S * act_bytes) rows

    # -- draws, in the order the sequential loops make them --
    def _start_epoch(self, lane: _Lane, loop: _Loop) -> None:
        gen, size = lane.generator, loop.schedule.batch_size
        if loop.digest:
            lane.batches = list(lane.order[torch.randperm(len(lane.order), generator=gen)].split(size))
        else:
            lane.batches = list(torch.randperm(lane.rows, generator=gen).split(size))
        lane.total, lane.seen = 0.0, 0

    def _next(self, lane: _Lane, loop: _Loop) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
        """The lane's next (private rows, public rows) batch, or None when its loop has left the step."""
        while lane.status == "run":
            if lane.batches is None:
                self._start_epoch(lane, loop)
            if lane.batches:
                idx = lane.batches.pop(0)
                if loop.digest:
                    return None, idx
                if loop.public is None:
                    return idx, None
                return idx, torch.randint(len(loop.public), (len(idx),), generator=lane.generator)
            self._end_epoch(lane, loop)  # an epoch with no batches
        return None

    # -- the guard, per lane --
    def _recover(self, lane: _Lane, loop: _Loop) -> None:
        """`distill._Guard.recover` for one lane: its kept weights back, half its rate, a fresh optimizer."""
        lane.recoveries += 1
        s = loop.schedule
        if lane.recoveries > distill.MAX_RECOVERIES:
            lane.status = "failed"
            lane.error = distill.DivergedError(
                f"{lane.phase} diverged (non-finite loss, weights or logits) {distill.MAX_RECOVERIES + 1} times, "
                f"the last at {s.setting}={lane.lr:g} (set {s.lr:g}); lower {s.setting}")
            return
        with torch.no_grad():
            for k, p in self.stack.params.items():
                p[lane.slot] = self._good[k][lane.slot]
        lane.lr /= 2
        self._opt.reset(lane.slot, lane.lr)
        lane.epoch, lane.batches, lane.status = 0, None, "run"

    def _end_epoch(self, lane: _Lane, loop: _Loop, finite: bool | None = None) -> None:
        """The sequential loop's end of an epoch: non-finite weights restart the lane; else the
        epoch counts (the last one once its outputs pass `_check`)."""
        lane.batches = None
        if finite is None:
            finite = self._finite_slots()[lane.slot]
        if not finite:
            self._recover(lane, loop)
            return
        mean = lane.total / max(lane.seen, 1)
        if lane.epoch + 1 == loop.schedule.epochs and not loop.digest:
            lane.status, lane.pending = "check", mean  # the sequential loop checks the released weights' logits
            return
        lane.epoch, lane.loss = lane.epoch + 1, mean
        if lane.epoch == loop.schedule.epochs:
            lane.status = "done"

    # -- the loop --
    def run(self, loop: _Loop, members: list[_Lane]) -> None:
        """Run `loop` for `members` (each from the weights its slot holds now, at loop.schedule's rate)."""
        s = loop.schedule
        self._good = {k: v.detach().clone() for k, v in self.stack.params.items()}  # each lane's kept weights
        self._opt = StackedOptimizer(s.optimizer, list(self.stack.params.values()), s.lr)
        self._grads = {k: torch.zeros_like(v) for k, v in self.stack.params.items()}  # a step's gradients
        for lane in members:
            lane.lr, lane.recoveries, lane.epoch, lane.batches = s.lr, 0, 0, None
            lane.loss, lane.status = float("nan"), "run" if s.epochs > 0 else "done"
            if loop.digest:  # distill's holdout draw: no validation slice, every row trains
                lane.order = torch.randperm(len(loop.public), generator=lane.generator)
        while True:
            stepping = []
            for lane in members:
                batch = self._next(lane, loop) if lane.status == "run" else None
                if batch is not None:
                    stepping.append((lane, *batch))
            if stepping:
                self._step(loop, stepping)
                continue
            checking = [lane for lane in members if lane.status == "check"]
            if not checking:
                return
            self._check(loop, checking)

    def _step(self, loop: _Loop, stepping: list) -> None:
        """One optimizer step of every lane in `stepping` ((lane, private rows, public rows) each).
        Lanes run widest batch first, in buckets of similar width (each padded to its widest, at
        most twice a lane's own), so that a few large partitions do not pad every lane."""
        device = self.x.device
        stepping = sorted(stepping, key=lambda s: -_width(s))
        widths = [_width(s) for s in stepping]
        # each bucket runs on its own copy of its slots' weights (a leaf, so that the backward pass
        # fills (S_b, *shape) gradients, not a zero-filled (C, *shape) one per bucket)
        losses, leaves, start = [], [], 0
        while start < len(stepping):
            end = start + 1
            while end < len(stepping) and 2 * widths[end] > widths[start]:
                end += 1
            bucket = stepping[start:end]
            slots = torch.tensor([lane.slot for lane, _, _ in bucket], device=device)
            leaf = {k: v.detach().requires_grad_(True) for k, v in self.stack.rows(slots).items()}
            losses.append(self._bucket_loss(loop, bucket, leaf))
            leaves.append((slots, leaf))
            start = end
        loss = torch.cat(losses)  # (S,) each lane's loss on its batch
        finite = torch.isfinite(loss)
        torch.where(finite, loss, 0.0).sum().backward()  # each slot's gradient is its own loss's
        for k, p in self.stack.params.items():
            if len(leaves) == 1 and self.stack.is_whole(leaves[0][0]):
                p.grad = leaves[0][1][k].grad  # every slot, in slot order
                continue
            p.grad = self._grads[k].zero_()  # slots outside the step: zero, and they take no step
            for slots, leaf in leaves:
                p.grad.index_copy_(0, slots, leaf[k].grad)
        params = list(self.stack.params.values())
        slots = torch.tensor([lane.slot for lane, _, _ in stepping], device=device)
        active = torch.zeros(self.stack.size, dtype=torch.bool, device=device)
        active[slots[finite]] = True
        if loop.schedule.clip_norm > 0:
            _clip(params, loop.schedule.clip_norm)
        self._opt.step(active)
        for p in params:
            p.grad = None
        ending = []
        for (lane, _, _), value, ok, size in zip(stepping, loss.tolist(), finite.tolist(), widths):
            if not ok:  # the sequential loop stops the epoch before this step
                self._recover(lane, loop)
                continue
            lane.total, lane.seen = lane.total + value * size, lane.seen + size
            if not lane.batches:
                ending.append(lane)
        if ending:
            finite_slots = self._finite_slots()
            for lane in ending:
                self._end_epoch(lane, loop, finite_slots[lane.slot])

    def _finite_slots(self) -> list[bool]:
        """Whether each slot's weights are all finite. A finite sum over a slot's weights means
        they all are (an inf or NaN makes it inf or NaN), and costs less than a test per weight;
        the slots whose sum is not finite (a non-finite weight, or finite ones whose sum overflows)
        are tested weight by weight."""
        with torch.no_grad():
            sums = torch.stack([p.flatten(1).sum(dim=1) for p in self.stack.params.values()], dim=1)  # (C, P)
            ok = torch.isfinite(sums).all(dim=1)
            for slot in torch.nonzero(~ok).flatten().tolist():
                ok[slot] = all(bool(torch.isfinite(p[slot]).all()) for p in self.stack.params.values())
        return ok.tolist()

    def _bucket_loss(self, loop: _Loop, bucket: list, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The losses (S,) of lanes whose batches are padded to the bucket's widest (row 0 of their
        own data and of the public inputs fills the padding, masked out of the loss)."""
        device = self.x.device
        slots = torch.tensor([lane.slot for lane, _, _ in bucket], device=device)
        sizes = [_width(s) for s in bucket]
        width = max(sizes)
        n = torch.tensor(sizes, device=device, dtype=torch.float32)  # (S,) examples in each lane's batch
        mask = torch.arange(width, device=device)[None, :] < n[:, None]  # (S, B): real rows, not padding

        def padded(parts: list[torch.Tensor]) -> torch.Tensor:  # S index tensors -> (S, B), padded with row 0
            out = torch.zeros(len(parts), width, dtype=torch.long)
            for i, part in enumerate(parts):
                out[i, : len(part)] = part
            return out.to(device)

        inputs, private, public = [], bucket[0][1] is not None, bucket[0][2] is not None
        if private:
            rows = padded([priv for _, priv, _ in bucket]) + self.offsets[slots][:, None]  # (S, B) into self.x
            inputs.append(self.x[rows])
            labels = self.y[rows]
        if public:
            j = padded([pub for _, _, pub in bucket])
            inputs.append(loop.public[j])  # (S, B, *shape)
            targets = loop.targets[j]  # (S, B, K)
        # the private and public rows in one pass (no batch norm: rows do not interact)
        logits = self.stack.forward(params, torch.cat(inputs, dim=1))  # (S, B or 2B, K)
        loss = torch.zeros(len(bucket), device=device)
        if private:
            ce = F.cross_entropy(logits[:, :width].flatten(0, 1), labels.flatten(), reduction="none")
            loss = loss + torch.where(mask, ce.view(len(bucket), width), 0.0).sum(1) / n
        if public:
            loss = loss + loop.weight * _public_loss(logits[:, -width:], targets, loop.teacher, mask, n)
        return loss

    def _check(self, loop: _Loop, lanes: list[_Lane]) -> None:
        """`train_supervised`'s last-epoch check, for the lanes done with their last epoch: finite
        logits on their own data and on the consensus's public inputs, or a restart."""
        slots = [lane.slot for lane in lanes]
        own = self.own_logits(slots)
        shared = [] if loop.public is None else [self.shared_logits(slots, loop.public)]
        for i, lane in enumerate(lanes):
            ok = bool(torch.isfinite(own[i]).all()) and all(bool(torch.isfinite(z[i]).all()) for z in shared)
            if ok:
                lane.epoch, lane.loss, lane.status = lane.epoch + 1, lane.pending, "done"
            else:
                self._recover(lane, loop)

    # -- inference --
    def _rows_per_pass(self, count: int, per_example: int) -> int:
        return max(1, self.budget // max(1, count * per_example))

    @torch.no_grad()
    def shared_logits(self, slots: list[int], x: torch.Tensor) -> torch.Tensor:
        """Logits (S, N, K) of the slots on inputs x (N, *shape) every slot sees, in row chunks."""
        params = self.stack.rows(torch.tensor(slots, device=x.device))
        step = self._rows_per_pass(len(slots), self.act_bytes)
        return torch.cat([self.stack.forward_shared(params, x[i : i + step]) for i in range(0, len(x), step)], dim=1)

    @torch.no_grad()
    def own_logits(self, slots: list[int]) -> list[torch.Tensor]:
        """Each slot's logits (N_c, K) on its own private rows (padded to the longest, in row chunks)."""
        device = self.x.device
        lanes = [self.lanes[s] for s in slots]
        longest = max(lane.rows for lane in lanes)
        params = self.stack.rows(torch.tensor(slots, device=device))
        step = self._rows_per_pass(len(slots), self.act_bytes)
        pos = torch.arange(longest, device=device)
        counts = torch.tensor([lane.rows for lane in lanes], device=device)
        starts = self.offsets[torch.tensor(slots, device=device)]
        if longest == 0:
            return [torch.zeros(0, 0, device=device) for _ in lanes]
        # a shorter partition repeats its last row as padding (its own: no other client's row), cut off below
        rows = starts[:, None] + torch.minimum(pos[None, :], (counts - 1).clamp(min=0)[:, None])  # (S, longest)
        out = torch.cat([self.stack.forward(params, self.x[rows[:, i : i + step]]) for i in range(0, longest, step)],
                        dim=1)  # (S, longest, K)
        return [out[k, : lane.rows] for k, lane in enumerate(lanes)]


def _width(stepping: tuple) -> int:
    """Rows of a (lane, private rows, public rows) batch."""
    return len(stepping[1] if stepping[1] is not None else stepping[2])


def _public_loss(logits: torch.Tensor, targets: torch.Tensor, teacher: distill.Teacher, mask: torch.Tensor,
                 n: torch.Tensor) -> torch.Tensor:
    """`distill.distillation_loss` per slot over its real rows: logits, targets (S, B, K), mask
    (S, B), n (S,) rows per slot -> (S,). KD: T^2 * sum KL / n (batchmean); logits: squared error / (n K)."""
    if teacher.kind == "logits":
        per_row = ((logits - targets) ** 2).sum(-1) / logits.shape[-1]
    else:
        t = teacher.temperature
        per_row = t**2 * F.kl_div(F.log_softmax(logits / t, dim=-1), targets, reduction="none").sum(-1)
    return torch.where(mask, per_row, 0.0).sum(1) / n


def _activation_bytes(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Bytes of one example's activations through `model`'s leaf modules (float32), for sizing."""
    total = [4 * math.prod(shape)]
    hooks = [m.register_forward_hook(lambda _m, _i, out: total.append(4 * out.numel()))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    finally:
        for h in hooks:
            h.remove()
    return sum(total)


def budget_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return CPU_BUDGET_BYTES


def chunk_size(model: nn.Module, input_shape: tuple[int, ...], batch: int, budget: int) -> int:
    """How many clients of `model`'s architecture one chunk holds: weights, gradient, two moments,
    kept weights and a step's temporaries (8 copies of the weights) and a step's activations
    (private and public rows, kept for the backward pass: about 3 times one forward's) per client."""
    weights = sum(4 * p.numel() for p in model.parameters())
    per_client = 8 * weights + 3 * 2 * batch * _activation_bytes(model, input_shape)
    return max(1, budget // per_client)


# ---- a group's round ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Trained:
    """What the stacked loops leave for one client: its weights and figures, or its failure."""

    state: dict[str, torch.Tensor] | None
    loss: float
    recoveries: float
    error: Exception | None = None


def train_group(models: list[nn.Module], data: list[tuple[np.ndarray, np.ndarray]], generators: list[torch.Generator],
                pids: list[int], digesting: list[bool], config: Config, joint: distill.JointTerm | None,
                device: torch.device, labels: Mapping[str, np.ndarray] | None = None, own: bool = False
                ) -> tuple[list[Trained], dict[str, list[np.ndarray]], list[np.ndarray | None]]:
    """Train one chunk of clients of one architecture as `fedkd.task.teacher_round` trains each:
    the digest (for the clients in `digesting`), then local training with the consensus term,
    each client from its model's weights, drawing from its own generator in the sequential order.
    Then label: `labels` name -> inputs (N, *shape) every client labels (the test set, the public
    inputs), and with `own` each client's own private rows (the stall check). Returns per client
    its `Trained`, name -> per-client logits (N, K), and its own-row logits (or None)."""
    stack = Stack(models, device)
    x = distill._tensor(np.concatenate([d[0] for d in data]), device)  # (sum N_c, *shape)
    y = distill._tensor(np.concatenate([d[1] for d in data]), device, torch.long)
    sizes = [len(d[1]) for d in data]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]), dtype=torch.long, device=device)
    lanes = [_Lane(pid, slot, gen, n, f"client {pid}'s digest step")
             for slot, (pid, gen, n) in enumerate(zip(pids, generators, sizes))]
    engine = _Lanes(stack, lanes, x, y, offsets, budget_bytes(device),
                    _activation_bytes(models[0], tuple(data[0][0].shape[1:])))
    recoveries = [0.0] * len(lanes)
    if joint is not None:
        px, pt = distill._tensor(joint.x, device), distill._tensor(joint.teacher.values, device)
        members = [lane for lane, d in zip(lanes, digesting) if d]
        if members and config.digest_epochs > 0:
            engine.run(_Loop(distill.Schedule.digest(config, "digest"), True, px, pt, joint.teacher, 1.0), members)
            for lane in members:
                recoveries[lane.slot] += lane.recoveries
        use_joint = joint.weight > 0
    else:
        use_joint = False
    members = [lane for lane in lanes if lane.status != "failed"]
    for lane in members:
        lane.phase = f"client {lane.pid}'s local training"
    loop = _Loop(distill.Schedule.local(config), False, px if use_joint else None, pt if use_joint else None,
                 joint.teacher if use_joint else None, joint.weight if use_joint else 0.0)
    engine.run(loop, members)
    out = []
    for lane in lanes:
        if lane.status == "failed":
            out.append(Trained(None, float("nan"), recoveries[lane.slot], lane.error))
        else:
            out.append(Trained(stack.state(lane.slot), lane.loss, recoveries[lane.slot] + lane.recoveries))
    labels = labels or {}
    alive = [lane.slot for lane in lanes if lane.status != "failed"]
    logits: dict[str, list[np.ndarray]] = {name: [None] * len(lanes) for name in labels}
    own_rows: list[np.ndarray | None] = [None] * len(lanes)
    if alive:
        for name, inputs in labels.items():
            z = engine.shared_logits(alive, distill._tensor(inputs, device)).float().cpu()
            for i, slot in enumerate(alive):
                logits[name][slot] = z[i].numpy()
        if own:
            for slot, z in zip(alive, engine.own_logits(alive)):
                own_rows[slot] = z.float().cpu().numpy()
    return out, logits, own_rows


def teacher_rounds(config: Config, server_round: int, clients: Mapping, consensus=None,
                   student: dict[str, torch.Tensor] | None = None,
                   prototypes: Mapping[str, dict[str, torch.Tensor]] | None = None,
                   with_predictions: bool = True) -> dict:
    """`fedkd.task.teacher_round` for each client of one group (`plan`; partition id -> `task.ClientStart`),
    trained stacked in chunks that fit memory: partition id -> its `task.TeacherUpdate` (engine
    "stacked"), or the exception that stopped it. Each client starts as `task.start_teacher` starts
    it (in id order, so the global stream is seeded as the sequential loop leaves it). Its
    train-seconds is its share of its chunk's time (training and labelling, over the chunk's
    clients), so that they still sum to the node's time; predict-seconds is the time to build its
    metrics and vector from its logits."""
    from fedkd import task

    splits = task.splits_for(config)
    device = task.resolve_device(config.device)
    out: dict = {}
    starts = {}
    for pid, start in clients.items():
        try:
            starts[pid] = task.start_teacher(config, splits, pid, start.state, student, prototypes)
        except Exception as exc:  # noqa: BLE001 (reported per client by the node)
            out[pid] = exc
    if not starts:
        return out
    joint = None if consensus is None else distill.JointTerm(splits.public_x[consensus.indices], consensus.teacher,
                                                             config.joint_weight)
    labels = {}
    if not config.dp_enabled:
        labels["test"] = splits.test_x
    if with_predictions:
        labels["public"] = task.public_inputs(config, splits, server_round)
    first = next(iter(starts.values()))[0]
    size = chunk_size(first, splits.input_shape, max(config.batch_size, config.distill_batch_size),
                      budget_bytes(device))
    ids = list(starts)
    for at in range(0, len(ids), size):
        chunk = ids[at : at + size]
        t0 = time.perf_counter()
        data = [splits.client(pid) for pid in chunk]
        trained, logits, own = train_group(
            [starts[pid][0] for pid in chunk], data,
            [task.generator(config.seed, "client", pid, server_round) for pid in chunk], chunk,
            [joint is not None and not starts[pid][1] for pid in chunk], config, joint, device,
            labels, own=task.reports_stall(config))
        share = (time.perf_counter() - t0) / len(chunk)
        for i, pid in enumerate(chunk):
            if trained[i].error is not None:
                out[pid] = trained[i].error
                continue
            out[pid] = _update(config, splits, server_round, pid, data[i][1], trained[i], starts[pid][1],
                               {name: z[i] for name, z in logits.items()}, own[i], share, with_predictions)
    return out


def _update(config: Config, splits, server_round: int, pid: int, y: np.ndarray, trained: Trained,
            from_student: bool, logits: Mapping[str, np.ndarray], own: np.ndarray | None, share: float,
            with_predictions: bool):
    """One client's `task.TeacherUpdate` from its stacked training and logits: the metrics
    `task.teacher_round` reports, in its order, and its vector."""
    from fedkd import task

    t0 = time.perf_counter()
    metrics = {"partition-id": float(pid), "train-seconds": share, "train-recoveries": trained.recoveries}
    test_logits = logits.get("test")
    if test_logits is not None:
        metrics.update(task.teacher_report(config, splits, y, trained.loss, test_logits, own))
    vector = np.zeros(0, dtype=np.float32)
    if with_predictions:
        vector, sent = task.release_logits(config, splits, y, server_round, logits["public"], test_logits)
        metrics.update(sent)
    metrics["predict-seconds"] = time.perf_counter() - t0
    return task.TeacherUpdate(trained.state, vector, metrics, (), from_student, engine="stacked")
