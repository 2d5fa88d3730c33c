"""Training that cannot fail silently: a diverging step is caught at once, the model falls back to
finite weights at half the rate, and past the bound the run stops with one line naming the phase
and the setting to change (fedkd.distill's guard). Each test uses a rate that diverges without
the guard: the old loops kept NaN weights or a chance-level student without a word."""

import math

import numpy as np
import pytest
import torch

from fedkd import distill, task
from fedkd.config import Config
from fedkd.server import ClientReply, DistillationServer

CPU = torch.device("cpu")


def _blobs(n: int = 200, k: int = 3, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.normal(scale=3.0, size=(k, d))
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_local_training_recovers_from_a_rate_that_overflows():
    x, y = _blobs()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    # lr 1e4 with momentum overflows in the first epoch; 1e4 / 2^4 still does, so 4 halvings are
    # not enough: the bound must stop it with the one-line error rather than loop or return NaN.
    with pytest.raises(distill.DivergedError, match=r"local training diverged .* lower lr"):
        distill.train_supervised(model, x, y, distill.Schedule(3, 1e4, 32),
                                 generator=torch.Generator().manual_seed(0), device=CPU)


def test_local_training_at_a_recoverable_rate_ends_finite_and_says_so():
    x, y = _blobs()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    fit = distill.train_supervised(model, x, y, distill.Schedule(5, 16.0, 32),
                                   generator=torch.Generator().manual_seed(0), device=CPU)
    assert fit["recoveries"] >= 1  # 16 overflows: without the guard the weights end NaN
    assert fit["lr"] == pytest.approx(16.0 / 2 ** fit["recoveries"])
    assert math.isfinite(fit["loss"]) and _finite(model)


class _OverflowsInEval(torch.nn.Module):
    """Finite weights and finite training losses, but logits that overflow in eval mode, as a
    BatchNorm network's can when its running statistics have drifted far from its batches (a
    28x28 teacher once released NaN predictions this way): only the outputs tell."""

    def __init__(self, overflow: bool = True):
        super().__init__()
        self.net, self.overflow = torch.nn.Linear(8, 3), overflow

    def forward(self, x):
        z = self.net(x)
        return z * float("inf") if self.overflow and not self.training else z


def test_logits_that_overflow_in_eval_mode_are_caught_like_a_non_finite_loss():
    x, y = _blobs()
    with pytest.raises(distill.DivergedError, match="lower lr"):  # it never heals: the bound stops it
        distill.train_supervised(_OverflowsInEval(), x, y, distill.Schedule(2, 0.01, 32),
                                 generator=torch.Generator().manual_seed(0), device=CPU)
    # control: the same module without the overflow trains through without a recovery
    fit = distill.train_supervised(_OverflowsInEval(overflow=False), x, y, distill.Schedule(2, 0.01, 32),
                                   generator=torch.Generator().manual_seed(0), device=CPU)
    assert fit["recoveries"] == 0 and math.isfinite(fit["loss"])


def test_distillation_never_leaves_a_student_worse_than_it_came_in():
    x, y = _blobs(300)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    distill.train_supervised(model, x, y, distill.Schedule(10, 0.05, 32),
                             generator=torch.Generator().manual_seed(0), device=CPU)
    before = distill.accuracy(distill.predict_logits(model, x, CPU), y)
    assert before > 0.9
    teacher = distill.Teacher(torch.softmax(torch.tensor(distill.predict_logits(model, x, CPU)) / 3, 1).numpy(),
                              "probs", 3.0)
    # SGD at 50 wrecks the student in its first steps (NaN or dead units) at every halving the guard allows
    stats = distill.distill(model, x, teacher, distill.Schedule(10, 50.0, 32, "sgd", val_fraction=0.2, patience=5),
                            generator=torch.Generator().manual_seed(1), device=CPU)
    after = distill.accuracy(distill.predict_logits(model, x, CPU), y)
    assert _finite(model)
    assert after >= before - 0.01, (before, after, stats)


def test_server_round_with_a_diverging_distill_rate_keeps_the_earlier_student():
    """Round 1 at the default rate, round 2 at a rate that diverges: the student after round 2
    is as good as after round 1 (or the run stops with one line), never at chance."""
    cfg = Config(num_clients=3, local_epochs=5, digest_epochs=0, distill_epochs=20, aggregation="plain",
                 num_public=300)
    server = DistillationServer(cfg)
    states: dict[int, dict] = {}

    def play(server_round: int) -> dict:
        replies = []
        for pid in range(cfg.num_clients):
            up = task.teacher_round(server.config, pid, server_round, states.get(pid))
            states[pid] = up.state
            replies.append(ClientReply(pid, up.vector, up.metrics))
        return server.finish_round(server_round, replies, 0.0)

    first = play(1)
    assert first.student_accuracy > 0.5
    server.config = cfg.replace(distill_lr=1e3, distill_optimizer="sgd")
    try:
        second = play(2)
    except distill.DivergedError as exc:
        assert "server distillation" in str(exc) and "distill-lr" in str(exc) and "\n" not in str(exc)
        return
    assert second.student_accuracy >= first.student_accuracy - 0.01
    assert second.distill_recoveries >= 1


def test_default_rounds_do_not_lose_accuracy_on_pathological_partitions():
    """Two classes per client, defaults otherwise. With the digest step at SGD 0.05 (the old
    default) the ensemble fell 0.77 -> 0.54 -> 0.26 over three rounds and the student with it:
    a step that large on flat consensus targets wrecked each teacher before local training."""
    cfg = Config(partition="pathological", aggregation="plain", rounds=3)
    server = DistillationServer(cfg)
    states: dict[int, dict] = {}
    records = []
    for server_round in (1, 2, 3):
        replies = []
        for pid in range(cfg.num_clients):
            up = task.teacher_round(cfg, pid, server_round, states.get(pid), server.consensus,
                                    student=server.student.state_dict())  # as the ClientApp gets it
            states[pid] = up.state
            replies.append(ClientReply(pid, up.vector, up.metrics))
        records.append(server.finish_round(server_round, replies, 0.0))
    ensemble = [r.ensemble_accuracy for r in records]
    student = [r.student_accuracy for r in records]
    assert ensemble[0] > 0.6 and student[0] > 0.4, records[0]  # chance is 0.1
    assert min(ensemble[1:]) >= 0.9 * ensemble[0], ensemble
    assert min(student[1:]) >= 0.8 * student[0], student


def test_clipped_steps_at_a_far_too_high_rate_still_end_finite():
    # clip-norm bounds each step, so the weights may grow without overflowing; what the guard
    # promises still holds: the model it hands back is finite and its logits are too
    x, y = _blobs()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    fit = distill.train_supervised(model, x, y, distill.Schedule(5, 1e4, 32, clip_norm=5.0),
                                   generator=torch.Generator().manual_seed(0), device=CPU)
    assert math.isfinite(fit["loss"]) and _finite(model)
    assert np.isfinite(distill.predict_logits(model, x, CPU)).all()


def test_learnt_nothing_draws_its_line_at_the_labels_own_class_shares():
    y = np.array([0, 0, 0, 1])  # shares 3/4, 1/4
    right = np.eye(2)[y] * 10.0  # confident and correct
    shares = np.log(np.tile([0.75, 0.25], (4, 1)))  # answering the shares: cross-entropy == their entropy
    slightly_better, slightly_worse = shares + np.eye(2)[y] * 0.1, shares - np.eye(2)[y] * 0.1
    one_class = np.tile([10.0, -10.0], (4, 1))  # collapsed onto class 0, confidently wrong on the rest
    assert not distill.learnt_nothing(right, y) and not distill.learnt_nothing(slightly_better, y)
    assert distill.learnt_nothing(slightly_worse, y) and distill.learnt_nothing(one_class, y)
    assert distill.learnt_nothing(np.zeros((4, 2)), y)  # uniform: log 2 nats > H(3/4, 1/4)
    assert not distill.learnt_nothing(np.tile([-10.0, 10.0], (3, 1)), np.zeros(3, dtype=int))  # one class: no line


def test_teachers_from_far_too_high_clipped_steps_report_stalled_and_sound_ones_do_not():
    # clip-norm on (the default): at lr 1000 every step is bounded, nothing overflows, the guard
    # never fires, and the teacher ends near chance; the flag is what names it
    flags = {}
    for lr in (0.05, 1000.0):
        cfg = Config(lr=lr, alpha=0.5, num_clients=4, local_epochs=5, num_public=50).validated()
        flags[lr] = [task.teacher_round(cfg, pid, 1, None).metrics["stalled"] for pid in range(4)]
    assert flags[0.05] == [0.0] * 4 and flags[1000.0] == [1.0] * 4
    replies = [ClientReply(pid, np.zeros(0, np.float32), {"train-seconds": 1.0, "stalled": flag})
               for pid, flag in zip(range(4), [0.0, 1.0, 0.0, 1.0])]
    from fedkd.results import stalled_text
    from fedkd.rounds import RoundRecord
    from fedkd.server import clients_record
    assert clients_record(1, replies, 0.0, 1e-5).stalled_clients == (1, 3)
    quiet = [ClientReply(0, np.zeros(0, np.float32), {"train-seconds": 1.0})]  # DP on: nobody reports it
    assert clients_record(1, quiet, 0.0, 1e-5).stalled_clients is None
    many = RoundRecord(2, stalled_clients=tuple(range(20)))  # a large cohort: the warning names a few
    assert stalled_text(many).startswith("round 2: local training learnt nothing on clients 0,1,2,3,4,5,6,7 ... (20")
    assert stalled_text(RoundRecord(1, stalled_clients=(4,))).count("client 4 ") == 1
    assert stalled_text(RoundRecord(1, stalled_clients=())) == "" == stalled_text(RoundRecord(1))
    dp = Config(alpha=0.5, num_clients=4, local_epochs=1, num_public=50, dp_clip=1.0,
                dp_noise_multiplier=1.0).validated()
    assert "stalled" not in task.teacher_round(dp, 0, 1, None).metrics
