"""The server core without Flower: aggregation, non-finite contributions, records, determinism."""

import json

import numpy as np
import pytest
import torch

from fedkd.aggregate import ContributionError, plain_sum
from fedkd.config import Config
from fedkd.results import RunRecorder
from fedkd.rounds import ROUND_KEYS
from fedkd.server import ClientReply, DistillationServer
from fedkd.task import public_sample, teacher_round

TINY = dict(num_clients=3, local_epochs=2, digest_epochs=1, distill_epochs=3, num_public=120)


def _replies(cfg, server_round, server, states):
    out = []
    for pid in range(cfg.num_clients):
        update = teacher_round(cfg, pid, server_round, states.get(pid), server.consensus)
        states[pid] = update.state
        out.append(ClientReply(pid, update.vector, update.metrics))
    return out


def test_plain_sum_is_order_independent_and_counts():
    vecs = {2: np.array([1.0, 2.0], np.float32), 0: np.array([0.5, 0.5], np.float32)}
    agg = plain_sum(vecs)
    np.testing.assert_array_equal(agg.total, [1.5, 2.5])
    assert agg.count == 2 and agg.contributors == (0, 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_contribution_names_the_client(bad):
    with pytest.raises(ContributionError, match="client 7 produced 1 non-finite"):
        plain_sum({1: np.zeros(3, np.float32), 7: np.array([0.0, bad, 0.0], np.float32)})


def test_wrong_length_is_refused():
    with pytest.raises(ContributionError, match="client 1 sent 2 values; expected 3"):
        plain_sum({0: np.zeros(3, np.float32), 1: np.zeros(2, np.float32)})


def test_round_record_has_every_key_and_plausible_values():
    cfg = Config(**TINY)
    server, states = DistillationServer(cfg), {}
    record = server.finish_round(1, _replies(cfg, 1, server, states), seconds_clients=0.0)
    assert set(record.to_json()) == set(ROUND_KEYS)
    assert 0.0 <= record.student_accuracy <= 1.0 and record.ensemble_accuracy > 0.3
    assert record.contributors == 3
    # (num_public, K) float32 soft labels, then the K per-class weights of the default seen-classes rule
    assert record.upload_bytes_per_client == (120 * 10 + 10) * 4
    assert server.consensus is not None and len(server.consensus.indices) == 120


def test_nan_client_stops_the_round_with_its_name():
    cfg = Config(**TINY)
    server, states = DistillationServer(cfg), {}
    replies = _replies(cfg, 1, server, states)
    poisoned = replies[1].vector.copy()
    poisoned[5] = np.nan
    replies[1] = ClientReply(1, poisoned, replies[1].metrics)
    with pytest.raises(ContributionError, match="client 1 produced"):
        server.finish_round(1, replies, seconds_clients=0.0)


def test_same_seed_same_client_vector():
    cfg = Config(**TINY)
    a = teacher_round(cfg, 0, 1, None)
    b = teacher_round(cfg, 0, 1, None)
    np.testing.assert_array_equal(a.vector, b.vector)
    assert a.metrics["teacher-accuracy"] == b.metrics["teacher-accuracy"]


def test_public_sample_is_shared_and_changes_by_round():
    cfg = Config(public_sample=50)
    assert np.array_equal(public_sample(cfg, 1), public_sample(cfg, 1))
    assert not np.array_equal(public_sample(cfg, 1), public_sample(cfg, 2))
    assert len(np.unique(public_sample(cfg, 3))) == 50


def test_central_and_local_records_use_null_for_what_does_not_apply():
    cfg = Config(**{**TINY, "method": "local"})
    server, states = DistillationServer(cfg), {}
    record = server.finish_round(1, _replies(cfg, 1, server, states), seconds_clients=0.0)
    assert record.student_accuracy is None and record.ensemble_accuracy is None
    assert record.teacher_accuracy_mean is not None and record.upload_bytes_per_client == 0
    central = DistillationServer(Config(**{**TINY, "method": "central"})).central_round(1)
    assert central.student_accuracy > 0.5 and central.ensemble_accuracy is None


def test_failure_keeps_saved_rounds(tmp_path):
    cfg = Config(out=str(tmp_path))
    rec = RunRecorder(cfg)
    rec.start()
    rec.add_round({"round": 1, "student_accuracy": 0.9})
    rec.fail("ContributionError: client 3 produced 2 non-finite prediction values")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "failed" and "client 3" in saved["error"]
    assert saved["rounds"] == [{"round": 1, "student_accuracy": 0.9}]
    assert json.loads((tmp_path / "config.json").read_text())["num-clients"] == 10
    assert not list(tmp_path.glob("*.tmp"))


def test_dp_sum_of_colluders_only_is_accounted_with_the_target_alone_and_refused():
    from fedkd.aggregate import Aggregate
    from fedkd.privacy.accounting import Ledger
    from fedkd.server import PrivacyBudgetError
    from fedkd.task import dp_params

    cfg = Config(**dict(TINY, num_clients=4), dp_clip=1.0, dp_noise_multiplier=1.0, dp_colluders=2,
                 dp_max_dropouts=1).validated()
    server = DistillationServer(cfg)
    params = dp_params(cfg, 10, 1)
    record = {}
    with pytest.raises(PrivacyBudgetError) as err:  # 2 survivors, both possibly colluders
        server._release(1, Aggregate(np.zeros(params.dim), 2, (0, 1)), record)
    assert err.value.status == "too-few-survivors"
    assert record["privacy"]["honest_contributors"] == 1  # an honest client in the sum has its own share there
    assert server.ledger.epsilon == pytest.approx(Ledger(cfg.dp_delta).record(params, 1))


@pytest.mark.parametrize("step, expected", [(2.0, 2.0), (-1.0, 1.5)], ids=["set", "auto"])
def test_server_step_distils_a_step_past_the_ensemble_from_round_2_and_the_ensemble_before(monkeypatch, step,
                                                                                          expected):
    from fedkd import distill

    targets, before = [], []
    real = distill.distill

    def spy(model, x, teacher, *args, **kwargs):  # the server's target, and its student's logits as it came in
        if model is server.student:  # not a client's digest step
            targets.append(teacher.values.copy())
            before.append(distill.predict_logits(model, x, torch.device("cpu")))
        return real(model, x, teacher, *args, **kwargs)

    monkeypatch.setattr(distill, "distill", spy)
    plain = []
    monkeypatch.setattr(DistillationServer, "_combine", lambda self, *a, _c=DistillationServer._combine:
                        plain.append(_c(self, *a)) or plain[-1])
    cfg = Config(**TINY, server_step=step, device="cpu")  # the spy's logits and the server's on one device
    server, states = DistillationServer(cfg), {}
    for r in (1, 2):
        server.finish_round(r, _replies(cfg, r, server, states), seconds_clients=0.0)
    # _combine builds the public teacher, then the test part's: every other one is the public one
    public = plain[0::2]
    np.testing.assert_array_equal(targets[0], public[0].values)  # round 1: no student to step from yet
    assert np.abs(targets[1] - public[1].values).max() > 0.05  # round 2: not the ensemble, but
    # the step from the student as round 2 found it, past the ensemble
    np.testing.assert_allclose(targets[1], distill.extrapolate(public[1], before[1], expected).values, atol=1e-6)
    np.testing.assert_array_equal(server.consensus.teacher.values, targets[1][: len(server.consensus.indices)])


def test_server_step_is_checked():
    from fedkd.config import ConfigError

    with pytest.raises(ConfigError, match="server-step"):
        Config(server_step=0).validated()
    with pytest.raises(ConfigError, match="distributed DP"):
        Config(server_step=1.5, dp_clip=1.0, dp_noise_multiplier=1.0).validated()
    with pytest.raises(ConfigError, match="logits rule"):
        Config(server_step=2, ensemble="logits").validated()
    # auto (-1) steps 1.5 under the mean rule with full cohorts and no DP only (not past DS-FL's sharpened
    # ensemble, the logits rule's or a noise-flattened one); set by hand, logits and distributed DP are refused
    assert Config().validated().step == 1.5
    assert Config(server_step=1.25).validated().step == 1.25
    assert Config(ensemble="dsfl").validated().step == 1.0
    assert Config(ensemble="logits").validated().step == 1.0
    assert Config(ensemble="geometric").validated().step == 1.0
    assert Config(dp_clip=1.0, dp_noise_multiplier=1.0).validated().step == 1.0
    assert Config(teacher_dp_noise_multiplier=1.0).validated().step == 1.0  # DP-SGD teachers: not measured
    assert Config(clients_per_round=5).validated().step == 1.0  # cohorts: each round's ensemble from others
    assert Config(clients_per_round=10).validated().step == 1.5
    with pytest.raises(ConfigError, match="server-step"):
        Config(server_step=-2).validated()
