"""Issue 12's sum-compatible weighted ensembles: clients upload w * p and w, the (secure) sum of
both reaches the server, which divides. The division must equal the weighted mean computed
directly from every client's predictions, and the secure sum must equal the plain one."""

import numpy as np
import pytest
import torch

from fedkd import distill
from fedkd.aggregate import secagg_config
from fedkd.apps.secure import fixed_point_sum
from fedkd.config import Config, ConfigError
from fedkd.secagg import run_in_memory
from fedkd.task import Layout

K, M, N_TEST, CLIENTS, T = 10, 40, 25, 6, 3.0


def _logits(seed):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3, (M, K)).astype(np.float32), rng.normal(0, 3, (N_TEST, K)).astype(np.float32)


def _client_vector(layout, pub, test, scheme, class_w):
    blocks = []
    for z in (pub, test):
        conf = distill.confidence(z, scheme) if layout.weighting == "example" else None
        labels = distill.client_payload(z, "mean", T, class_w, conf)
        blocks.append((labels, class_w if layout.weighting == "class" else conf))
    return layout.pack(*blocks)


@pytest.mark.parametrize("scheme", ["max-prob", "entropy"])
def test_confidence_weighted_secure_sum_equals_plain_and_the_direct_weighted_mean(scheme):
    config = Config(num_clients=CLIENTS, confidence_weighting=scheme)
    layout = Layout(M, N_TEST, K, "example")
    logits = {c: _logits(c) for c in range(CLIENTS)}
    vectors = {c: _client_vector(layout, *logits[c], scheme, None) for c in range(CLIENTS)}
    assert len(vectors[0]) == layout.length == M * K + M + N_TEST * K + N_TEST

    secure = run_in_memory(vectors, secagg_config(config, K))
    plain = fixed_point_sum(config, K)(vectors)
    assert np.array_equal(secure.sum, plain.total)  # masks cancel exactly

    (public, public_w), _ = layout.unpack(secure.sum)
    teacher = distill.combine(public, CLIENTS, "mean", T, weights=public_w)
    # directly: sum_i w_i(x) p_i(x) / sum_i w_i(x), per example
    p = np.stack([torch.softmax(torch.tensor(logits[c][0], dtype=torch.float64) / T, -1).numpy() for c in range(CLIENTS)])
    w = np.stack([distill.confidence(logits[c][0], scheme).astype(np.float64) for c in range(CLIENTS)])
    direct = (w[..., None] * p).sum(0) / w.sum(0)[:, None]
    np.testing.assert_allclose(teacher.values, direct / direct.sum(1, keepdims=True), atol=2e-4)
    # the control: the unweighted mean differs, so the check can fail
    assert np.abs(p.mean(0) - direct).max() > 1e-2


def test_seen_classes_mean_is_taken_over_the_clients_that_saw_each_class():
    config = Config(num_clients=CLIENTS, vote_weighting="seen-classes")
    layout = Layout(M, N_TEST, K, "class")
    rng = np.random.default_rng(7)
    seen = {c: (rng.random(K) < 0.5).astype(np.float32) for c in range(CLIENTS)}
    seen[0][:] = 1.0  # every class has at least one voter
    logits = {c: _logits(10 + c) for c in range(CLIENTS)}
    vectors = {c: _client_vector(layout, *logits[c], "", seen[c]) for c in range(CLIENTS)}
    secure = run_in_memory(vectors, secagg_config(config, K))
    (public, public_w), _ = layout.unpack(secure.sum)
    np.testing.assert_allclose(public_w.ravel(), sum(seen.values()), atol=1e-4)  # holders per class
    teacher = distill.combine(public, CLIENTS, "mean", T, weights=public_w)
    p = np.stack([torch.softmax(torch.tensor(logits[c][0], dtype=torch.float64) / T, -1).numpy() for c in range(CLIENTS)])
    s = np.stack([seen[c] for c in range(CLIENTS)])[:, None, :]  # (clients, 1, K)
    direct = (s * p).sum(0) / s.sum(0)
    np.testing.assert_allclose(teacher.values, direct / direct.sum(1, keepdims=True), atol=2e-4)
    # without the per-class division (the pre-issue-12 rule) classes many clients saw are inflated
    old = distill.combine(public, CLIENTS, "mean", T).values
    assert np.abs(old - teacher.values).max() > 1e-2


def test_weights_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="neither"):
        distill.combine(np.ones((4, 3)), 2, "mean", 1.0, weights=np.ones((1, 4)))
    with pytest.raises(ValueError, match="mean and dsfl"):
        distill.combine(np.ones((4, 3)), 2, "geometric", 1.0, weights=np.ones((4, 1)))


def test_weighting_settings_are_validated_in_one_line():
    with pytest.raises(ConfigError, match="not both"):
        Config.from_run_config({"vote-weighting": "seen-classes", "confidence-weighting": "max-prob"})
    with pytest.raises(ConfigError, match="works with ensemble mean or dsfl"):
        Config.from_run_config({"confidence-weighting": "max-prob", "ensemble": "logits", "vote-weighting": "none"})
    with pytest.raises(ConfigError, match="teacher-init 'average' is unknown"):
        Config.from_run_config({"teacher-init": "average"})
