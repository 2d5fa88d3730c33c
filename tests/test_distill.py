"""KD losses, ensemble rules and metrics against their formulas on hand-made inputs."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkd import distill
from fedkd.config import Config


def test_kd_loss_equals_its_formula():
    g = torch.Generator().manual_seed(0)
    s, t, T = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g), 3.0
    p_t, p_s = torch.softmax(t / T, 1), torch.softmax(s / T, 1)
    by_hand = T**2 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()  # T^2 * KL per example, batch mean
    assert torch.allclose(distill.kd_loss(s, p_t, T), by_hand, atol=1e-6)


def test_kd_loss_is_zero_when_student_matches_teacher():
    z = torch.randn(4, 10)
    assert distill.kd_loss(z, distill.softmax_t(z, 4.0), 4.0).abs() < 1e-6


def _grad_norm(T: float, scale: bool) -> float:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(64, 10, generator=g).requires_grad_()
    t = torch.randn(64, 10, generator=g)
    loss = distill.kd_loss(s, distill.softmax_t(t, T), T)
    if not scale:
        loss = loss / T**2
    loss.backward()
    return float(s.grad.norm())


def test_t_squared_keeps_gradient_scale_as_t_grows():
    # with T^2 the gradient is nearly T-invariant at high T; without it, it shrinks like 1/T^2
    with_factor = _grad_norm(20.0, True) / _grad_norm(10.0, True)
    without = _grad_norm(20.0, False) / _grad_norm(10.0, False)
    assert 0.9 < with_factor < 1.1
    assert 0.2 < without < 0.3


def test_logit_matching_is_mse():
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    assert float(distill.logit_matching_loss(a, b)) == pytest.approx(2.5)


def _two_clients():
    z1 = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    z2 = np.array([[0.0, 2.0, 0.0], [0.0, 3.0, 0.0]])
    return z1, z2


def _sum_then_combine(rule, T=2.0, era=0.1):
    z1, z2 = _two_clients()
    total = distill.client_payload(z1, rule, T).astype(np.float64) + distill.client_payload(z2, rule, T)
    return distill.combine(total, 2, rule, T, era)


def test_mean_rule_is_mean_of_tempered_probabilities():
    z1, z2 = _two_clients()
    sm = lambda z: np.exp(z / 2) / np.exp(z / 2).sum(1, keepdims=True)
    teacher = _sum_then_combine("mean")
    np.testing.assert_allclose(teacher.values, (sm(z1) + sm(z2)) / 2, rtol=1e-6)
    assert teacher.kind == "probs" and teacher.temperature == 2.0


def test_geometric_rule_is_normalised_geometric_mean():
    z1, z2 = _two_clients()
    sm = lambda z: np.exp(z / 2) / np.exp(z / 2).sum(1, keepdims=True)
    geo = np.sqrt(sm(z1) * sm(z2))
    np.testing.assert_allclose(_sum_then_combine("geometric").values, geo / geo.sum(1, keepdims=True), rtol=1e-5)


def test_logits_rule_is_mean_logits():
    z1, z2 = _two_clients()
    teacher = _sum_then_combine("logits")
    np.testing.assert_allclose(teacher.values, (z1 + z2) / 2, rtol=1e-6)
    assert teacher.kind == "logits"


def test_dsfl_rule_sharpens_the_mean():
    mean = _sum_then_combine("mean").values
    sharp = _sum_then_combine("dsfl", era=0.1)
    assert sharp.temperature == 1.0
    np.testing.assert_array_equal(sharp.predictions(), mean.argmax(1))
    assert (sharp.values.max(1) > mean.max(1)).all()  # lower entropy
    expected = np.exp(mean / 0.1) / np.exp(mean / 0.1).sum(1, keepdims=True)
    np.testing.assert_allclose(sharp.values, expected, rtol=1e-5)


def test_class_weights_scale_votes_and_renormalise():
    p = np.array([[0.5, 0.5]])
    logits = np.log(p) * 2.0  # softmax(z/2) == p
    out = distill.client_payload(logits, "mean", 2.0, class_weights=np.array([3.0, 1.0]))
    np.testing.assert_allclose(distill.combine(out.astype(np.float64), 1, "mean", 2.0).values, [[0.75, 0.25]], rtol=1e-6)
    with pytest.raises(ValueError, match="mean and dsfl"):
        distill.client_payload(logits, "logits", 2.0, class_weights=np.array([1.0, 1.0]))


def test_unknown_rule_is_named():
    with pytest.raises(ValueError, match="'median'"):
        distill.client_payload(np.zeros((1, 2)), "median", 1.0)


def test_geometric_payload_is_finite_for_extreme_logits():
    out = distill.client_payload(np.array([[1e4, -1e4]]), "geometric", 1.0)
    assert np.isfinite(out).all() and out.min() == distill.LOG_PROB_FLOOR


def test_ece_known_cases():
    y = np.array([0, 0, 1, 1])
    perfect = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert distill.expected_calibration_error(perfect, y) == pytest.approx(0.0)
    # always 0.8 confident, right half the time: |0.5 - 0.8| = 0.3
    half = np.array([[0.8, 0.2], [0.2, 0.8], [0.8, 0.2], [0.2, 0.8]])
    assert distill.expected_calibration_error(half, y) == pytest.approx(0.3)
    # two bins: conf 0.95 all right (gap 0.05), conf 0.55 all wrong (gap 0.55) -> (0.05 + 0.55) / 2
    mixed = np.array([[0.95, 0.05], [0.95, 0.05], [0.45, 0.55], [0.45, 0.55]])
    assert distill.expected_calibration_error(mixed, np.array([0, 0, 0, 0])) == pytest.approx(0.3)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 20), st.integers(2, 6), st.floats(0.5, 10))
def test_mean_teacher_rows_are_distributions(n, k, T):
    z = np.random.default_rng(n * k).normal(size=(n, k)) * 5
    teacher = distill.combine(distill.client_payload(z, "mean", T).astype(np.float64) * 3, 3, "mean", T)
    np.testing.assert_allclose(teacher.values.sum(1), 1.0, rtol=1e-5)


def test_evaluate_logits_accuracy_and_nll():
    logits = np.log(np.array([[0.9, 0.1], [0.3, 0.7]]))
    m = distill.evaluate_logits(logits, np.array([0, 0]))
    assert m["accuracy"] == 0.5
    assert m["nll"] == pytest.approx(-(np.log(0.9) + np.log(0.3)) / 2, rel=1e-6)


def test_distill_moves_student_towards_teacher_and_restores_best():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    target = distill.Teacher(np.tile(np.array([[0.8, 0.1, 0.1]], np.float32), (60, 1)), "probs", 2.0)
    before = distill.kd_loss(model(torch.tensor(x)), torch.tensor(target.values), 2.0).item()
    stats = distill.distill(model, x, target, distill.Schedule(30, 0.1, 16, val_fraction=0.2, patience=5),
                            generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    after = distill.kd_loss(model(torch.tensor(x)), torch.tensor(target.values), 2.0).item()
    assert after < before / 5
    assert stats["val_loss"] <= before


def test_distill_on_images_learns_and_hands_the_model_back_in_the_usual_layout():
    # the loop runs channels-last on images; what leaves it (weights sent down, saved, copied) must not
    from fedkd.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn", (1, 8, 8), 3)
    x = np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32)
    target = distill.Teacher(np.tile(np.array([[0.8, 0.1, 0.1]], np.float32), (40, 1)), "probs", 2.0)
    before = distill.kd_loss(model(torch.tensor(x)), torch.tensor(target.values), 2.0).item()
    distill.distill(model, x, target, distill.Schedule(5, 0.01, 16, optimizer="adam", channels_last=True),
                    generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert distill.kd_loss(model(torch.tensor(x)), torch.tensor(target.values), 2.0).item() < before / 2
    assert all(t.is_contiguous() for t in model.state_dict().values())
    assert distill.Schedule.server(Config()).channels_last  # the server's distillation; a client's digest is not
    assert not distill.Schedule.digest(Config(), "digest").channels_last


def test_mean_rule_never_gives_negative_probabilities():
    total = np.array([[1.0 - 1e-9, -1e-9, 0.0]])  # what fixed-point decoding can return for a 0
    teacher = distill.combine(total, 1, "mean", 2.0)
    assert (teacher.values >= 0).all()
    np.testing.assert_allclose(teacher.values.sum(1), 1.0, rtol=1e-6)


def test_tiny_validation_slice_is_not_trusted_for_early_stopping():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)  # 10% is 3 examples
    target = distill.Teacher(np.tile(np.array([[0.8, 0.1, 0.1]], np.float32), (30, 1)), "probs", 2.0)
    stats = distill.distill(model, x, target, distill.Schedule(40, 0.01, 16, val_fraction=0.1, patience=2),
                            generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert stats["epochs"] == 40 and np.isnan(stats["val_loss"])  # every epoch ran, none held out


def test_clip_norm_bounds_each_local_step():
    # One SGD step over one batch: torch's SGD moves by lr * (g + wd * w) on its first step (the
    # momentum buffer starts as that), so the gradient part of the move is the clipped g itself.
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(32, 6, generator=g) * 50).numpy()  # large inputs: an unclipped gradient norm far above 1
    y = torch.randint(0, 3, (32,), generator=g).numpy()

    def step_norm(clip: float) -> float:
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3)
        w0 = torch.cat([p.detach().clone().flatten() for p in model.parameters()])
        distill.train_supervised(model, x, y, distill.Schedule(1, 0.1, 32, clip_norm=clip),
                                 generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
        w1 = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float(((w0 - w1) / 0.1 - 5e-4 * w0).norm())  # = the gradient the optimiser used

    assert step_norm(0.0) > 10.0  # the control: without clipping the step is large
    assert step_norm(1.0) == pytest.approx(1.0, rel=1e-3)  # clipped to exactly the bound


def test_clip_norm_reaches_local_training_only():
    from fedkd.config import Config

    config = Config(clip_norm=3.0)
    assert distill.Schedule.local(config).clip_norm == 3.0  # teachers, FedAvg and central train through it
    assert distill.Schedule.digest(config, "digest").clip_norm == 0.0
    assert distill.Schedule.server(config).clip_norm == 0.0


def test_extrapolate_steps_from_the_student_past_the_ensemble_in_log_space():
    rng = np.random.default_rng(0)
    T = 3.0
    ensemble = distill.combine(distill.client_payload(rng.normal(0, 3, (20, 5)), "mean", T), 1, "mean", T)
    z_s = rng.normal(0, 3, (20, 5))
    assert distill.extrapolate(ensemble, z_s, 1.0) is ensemble  # step 1: the ensemble itself
    p_s = np.exp(z_s / T) / np.exp(z_s / T).sum(1, keepdims=True)
    for step in (0.5, 2.0):
        raw = p_s * (ensemble.values / p_s) ** step  # the same target without logarithms
        target = distill.extrapolate(ensemble, z_s, step)
        np.testing.assert_allclose(target.values, raw / raw.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
        assert target.temperature == T and target.kind == "probs"
    # a student that already predicts the ensemble has nowhere to step: the target stays put
    agree = np.log(ensemble.values) * T
    np.testing.assert_allclose(distill.extrapolate(ensemble, agree, 2.0).values, ensemble.values, atol=1e-5)
    # past the ensemble: a student at 1:1 and an ensemble at 4:1 give a target at 16:1 with step 2
    two = distill.Teacher(np.array([[0.8, 0.2]], np.float32), "probs", T)
    np.testing.assert_allclose(distill.extrapolate(two, np.zeros((1, 2)), 2.0).values, [[16 / 17, 1 / 17]], rtol=1e-6)
    # dsfl's teacher is matched at temperature 1: the student's logits are softened by the teacher's own
    sharp = distill.combine(distill.client_payload(rng.normal(0, 3, (20, 5)), "dsfl", 1.0), 1, "dsfl", 1.0)
    p1 = np.exp(z_s) / np.exp(z_s).sum(1, keepdims=True)
    raw = p1 * (sharp.values / p1) ** 2.0
    np.testing.assert_allclose(distill.extrapolate(sharp, z_s, 2.0).values, raw / raw.sum(1, keepdims=True),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="logits"):
        distill.extrapolate(distill.Teacher(np.zeros((2, 5), np.float32), "logits", T), z_s[:2], 2.0)
