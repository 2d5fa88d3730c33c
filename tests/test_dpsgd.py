"""DP-SGD teachers (fedkd.privacy.dpsgd): Opacus training, epsilon checked against Google's
dp-accounting, composition across rounds, refusal of models without per-example gradients."""

import math

import dp_accounting
import numpy as np
import pytest
import torch

from fedkd import distill
from fedkd.config import Config
from fedkd.models import build_model
from fedkd.privacy import dpsgd
from fedkd.privacy.accounting import ORDERS
from fedkd.privacy.mechanism import PrivacyError
from fedkd.task import splits_for

CPU = torch.device("cpu")


def _google_epsilon(noise, rate, steps, delta):
    acc = dp_accounting.rdp.RdpAccountant(list(ORDERS))
    acc.compose(dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise)), steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("noise, rate, steps", [(1.1, 256 / 60000, 60 * 235), (1.0, 0.25, 80), (2.0, 0.1, 500)])
def test_epsilon_agrees_with_an_independent_accountant(noise, rate, steps):
    # Opacus' RDP accountant against dp-accounting's, two implementations of Mironov et al. 2019;
    # they differ only in the grid of orders
    ours = dpsgd.epsilon(((noise, rate, steps),), 1e-5)
    assert ours == pytest.approx(_google_epsilon(noise, rate, steps, 1e-5), rel=0.02)


def test_epsilon_edge_cases():
    assert dpsgd.epsilon((), 1e-5) == 0.0
    assert dpsgd.epsilon(((0.0, 0.1, 10),), 1e-5) == math.inf


def test_training_learns_and_rounds_compose():
    cfg = Config()
    splits = splits_for(cfg)
    x, y = splits.private_x[:400], splits.private_y[:400]
    torch.manual_seed(0)
    model = build_model("mlp", splits.input_shape, splits.num_classes)
    first = dpsgd.train(model, x, y, distill.Schedule(15, 0.1, 32), dpsgd.Noise(0.7, 1.0, 1e-5),
                        device=CPU)
    acc = distill.accuracy(distill.predict_logits(model, splits.test_x, CPU), splits.test_y)
    assert acc > 0.5  # chance is 0.1
    rate = 1 / math.ceil(400 / 32)
    assert first.history == ((0.7, rate, 15 * math.ceil(400 / 32)),)
    second = dpsgd.train(model, x, y, distill.Schedule(5, 0.1, 32), dpsgd.Noise(0.7, 1.0, 1e-5),
                         device=CPU, history=first.history)
    assert second.history == ((0.7, rate, 20 * math.ceil(400 / 32)),)  # same events merged, steps added
    assert second.epsilon > first.epsilon
    assert second.epsilon == pytest.approx(dpsgd.epsilon(second.history, 1e-5))


def test_model_with_batchnorm_is_refused_in_one_line():
    model = build_model("resnet8", (3, 32, 32), 10)
    with pytest.raises(PrivacyError) as err:
        dpsgd.check_model(model, "resnet8")
    assert "resnet8" in str(err.value) and "BatchNorm" in str(err.value) and "\n" not in str(err.value)
    dpsgd.check_model(build_model("cnn", (1, 8, 8), 10), "cnn")  # no error


def test_noise_is_not_drawn_from_the_run_seed():
    cfg = Config()
    splits = splits_for(cfg)
    x, y = splits.private_x[:64], splits.private_y[:64]
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("mlp", splits.input_shape, splits.num_classes)
        dpsgd.train(model, x, y, distill.Schedule(1, 0.1, 32), dpsgd.Noise(1.0, 1.0, 1e-5),
                    device=CPU)
        states.append(np.concatenate([p.detach().numpy().ravel() for p in model.parameters()]))
    assert not np.array_equal(states[0], states[1])


def test_dp_sgd_that_diverges_stops_in_one_line():
    """A non-finite loss in DP-SGD stops at once, naming the setting (no silent NaN teacher); it
    does not retry, since every step already taken is spent privacy."""
    cfg = Config()
    splits = splits_for(cfg)
    x, y = splits.private_x[:200], splits.private_y[:200]
    torch.manual_seed(0)
    model = build_model("mlp", splits.input_shape, splits.num_classes)
    with pytest.raises(distill.DivergedError, match=r"DP-SGD local training diverged .* lower lr"):
        dpsgd.train(model, x, y, distill.Schedule(5, 1e12, 32), dpsgd.Noise(0.5, 1e6, 1e-5),
                    device=CPU)
