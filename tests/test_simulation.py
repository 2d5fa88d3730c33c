"""End to end through Flower's simulation engine (Ray): real ServerApp, real ClientApps."""

import json

import pytest

from fedkd.cli import simulate
from fedkd.config import Config

SMALL = dict(num_clients=3, rounds=2, local_epochs=5, digest_epochs=1, distill_epochs=15, num_public=200,
             client_cpus=1.0)
ROUND_SCHEMA = {"round", "student_accuracy", "student_nll", "student_ece", "ensemble_accuracy",
                "teacher_accuracy_mean", "upload_bytes_per_client", "seconds"}
FINAL_SCHEMA = {"student_accuracy", "ensemble_accuracy", "teacher_accuracy_mean", "seconds_total"}


def _check_files(out, results):
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["status"] == "completed"
    assert ROUND_SCHEMA <= set(saved["rounds"][0]) and FINAL_SCHEMA <= set(saved["final"])
    assert [r["round"] for r in saved["rounds"]] == [1, 2]
    assert (out / "curves.png").stat().st_size > 1000
    assert json.loads((out / "config.json").read_text()) == saved["config"]
    return saved


def test_fd_simulation_three_clients_two_rounds(tmp_path):
    cfg = Config(**SMALL, out=str(tmp_path))
    saved = _check_files(tmp_path, simulate(cfg))
    final = saved["final"]
    assert final["student_accuracy"] > 0.6  # chance is 0.1 on digits
    assert final["ensemble_accuracy"] > 0.6
    assert saved["rounds"][1]["contributors"] == 3
    # secure aggregation (the default) uploads the whole vector masked: public then test predictions,
    # (200 + 359) x 10 values and each block's 10 seen-class weights, at 24 bits, plus keys and shares
    vector_bytes = ((200 + 359) * 10 + 2 * 10) * 3
    assert vector_bytes <= saved["rounds"][0]["upload_bytes_per_client"] <= 1.1 * vector_bytes
    assert saved["rounds"][0]["secagg"]["survivors"] == [0, 1, 2]


def test_fedavg_baseline_through_flower(tmp_path):
    cfg = Config(**SMALL, method="fedavg", out=str(tmp_path))
    saved = _check_files(tmp_path, simulate(cfg))
    assert saved["final"]["student_accuracy"] > 0.5
    assert saved["final"]["ensemble_accuracy"] is None
    assert saved["rounds"][0]["upload_bytes_per_client"] > 10_000  # the whole model


@pytest.mark.slow
def test_local_baseline_through_flower(tmp_path):
    cfg = Config(**SMALL, method="local", out=str(tmp_path))
    saved = _check_files(tmp_path, simulate(cfg))
    assert saved["final"]["student_accuracy"] is None
    assert saved["final"]["teacher_accuracy_mean"] > 0.2


def test_diverged_client_is_named_and_saved_files_stay_valid(tmp_path, capsys):
    from fedkd.cli import main

    # clip-norm 0: clipped steps are bounded, so at lr 1000 they end finite and useless instead of
    # overflowing (tests/test_divergence.py); unclipped, the guard must name the failure
    code = main(["run", "--clients", "3", "--rounds", "2", "--lr", "1000", "--local-epochs", "2",
                 "--num-public", "100", "--clip-norm", "0", "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    # the guard restarts at half the rate 4 times (1000 -> 62.5), then names the client, phase and setting
    assert "client " in err and "local training diverged" in err and "lower lr" in err and "Traceback" not in err
    assert "ClientAppException" not in err
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "failed" and "diverged" in saved["error"]
    assert saved["rounds"] == []
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 1000.0


def test_clipped_steps_at_a_far_too_high_rate_finish_with_the_stalled_clients_named(tmp_path, capsys):
    from fedkd.cli import main

    # with clip-norm on (the default) the same lr cannot overflow: the run finishes, and what would
    # otherwise pass in silence (teachers at chance) is named on the console and in results.json
    code = main(["run", "--clients", "3", "--rounds", "2", "--lr", "1000", "--local-epochs", "2",
                 "--num-public", "100", "--out", str(tmp_path)])
    assert code == 0
    err = capsys.readouterr().err
    assert "round 1: local training learnt nothing on clients 0,1,2" in err and "check lr" in err
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["stalled_clients"] for r in saved["rounds"]] == [[0, 1, 2], [0, 1, 2]]


DP_SMALL = dict(SMALL, rounds=3, public_sample=40, dp_clip=1.0, dp_noise_multiplier=1.0)


def _epsilons(cfg, rounds, honest):
    from fedkd.privacy.accounting import Ledger
    from fedkd.task import dp_params

    ledger = Ledger(cfg.dp_delta)
    return [ledger.record(dp_params(cfg, 10, r), honest) for r in range(1, rounds + 1)]


def test_dp_simulation_accounts_each_round_and_stops_before_the_budget(tmp_path):
    probe = Config(**DP_SMALL).validated()
    eps = _epsilons(probe, 3, honest=3)
    budget = (eps[1] + eps[2]) / 2  # room for two rounds, not three
    cfg = probe.replace(dp_epsilon_budget=budget, out=str(tmp_path))
    results = simulate(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["status"] == "budget-exhausted" and "round 3" in saved["stopped"]
    assert [r["round"] for r in saved["rounds"]] == [1, 2]
    for r, expected in zip(saved["rounds"], eps):
        p = r["privacy"]
        assert p["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert p["honest_contributors"] == 3 and p["wrapped_values"] == 0
        assert r["teacher_accuracy_mean"] is None and r["ensemble_accuracy"] is None  # nothing outside the noise
        assert r["secagg"]["survivors"] == [0, 1, 2]
    assert saved["privacy"]["epsilon"] == pytest.approx(eps[1]) and saved["privacy"]["rounds_released"] == 2
    assert saved["final"]["student_accuracy"] is not None


def test_dp_round_with_more_dropouts_than_sized_for_is_discarded(tmp_path):
    # 4 clients: with 3 the secure sum itself could not survive a drop-out (threshold 2 of 2 neighbours)
    cfg = Config(**dict(DP_SMALL, rounds=2, num_clients=4), drop="masked_input:1", out=str(tmp_path)).validated()
    simulate(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "too-few-survivors" and "only 3 of 4" in saved["stopped"]
    assert saved["rounds"] == []  # the refused round released nothing
    # ... but the server saw the sum, so its epsilon (3 honest contributors) is counted
    assert saved["privacy"]["epsilon"] == pytest.approx(_epsilons(cfg, 1, honest=3)[0])
    assert saved["privacy"]["epsilon"] > _epsilons(cfg, 1, honest=4)[0]


def test_dp_sgd_teachers_report_epsilon_composed_over_rounds(tmp_path):
    import math

    from fedkd.privacy import dpsgd
    from fedkd.task import splits_for

    cfg = Config(**dict(SMALL, local_epochs=2), method="local", teacher_dp_noise_multiplier=1.0,
                 out=str(tmp_path)).validated()
    saved = _check_files(tmp_path, simulate(cfg))
    splits = splits_for(cfg)
    for r in saved["rounds"]:
        per_client = r["teacher_epsilon"]["per_client"]
        assert set(per_client) == {"0", "1", "2"}
        for pid, eps in per_client.items():
            n = len(splits.client(int(pid))[1])
            batches = math.ceil(n / min(cfg.batch_size, n))
            # the node kept its history: round r has r rounds of DP-SGD steps behind it
            expected = dpsgd.epsilon(((1.0, 1 / batches, r["round"] * cfg.local_epochs * batches),), cfg.teacher_dp_delta)
            assert eps == pytest.approx(expected, rel=1e-9)
        assert r["teacher_epsilon"]["max"] == max(per_client.values())
