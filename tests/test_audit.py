"""`fedkd audit`: the attacks find what each server view leaks, the distributed-DP view stays
within the accountant's epsilon, the statistics are right, and bad input is one line."""

import argparse
import json
import math

import numpy as np
import pytest
from scipy import stats

from fedkd.privacy import audit, audit_cli, audit_stats
from fedkd.privacy.accounting import Ledger
from fedkd.privacy.mechanism import DPParams

# Seed 1 gives the target (client 0) 95 examples; 100 local epochs let its teacher memorise the
# canaries, so the undefended views must leak. (With seed 0 the target holds 16 examples and at
# the default 20 epochs its teacher barely fits them: the audit then finds much less.)
STRONG = dict(view="all", clients=10, canaries=300, canaries_per_run=50, seed=1, local_epochs=100)


@pytest.fixture(scope="module")
def strong() -> dict:
    return audit.run_audit(**STRONG)


def test_plain_view_finds_the_canaries(strong):
    plain = strong["views"]["plain"]["membership"]
    assert plain["tpr_at_fpr"]["0.01"] >= 0.9
    assert plain["auc"] >= 0.98
    assert plain["eps_lb"] > 2


def test_knowing_the_others_undoes_secure_aggregation(strong):
    plain, known = strong["views"]["plain"], strong["views"]["secagg-known-others"]
    assert known["membership"]["auc"] == pytest.approx(plain["membership"]["auc"])
    assert known["membership"]["eps_lb"] == pytest.approx(plain["membership"]["eps_lb"])
    assert known["label_inference"]["kl"] == pytest.approx(plain["label_inference"]["kl"], abs=1e-6)


def test_secure_sum_alone_is_weaker_than_plain(strong):
    plain, secagg = strong["views"]["plain"]["membership"], strong["views"]["secagg"]["membership"]
    assert secagg["auc"] < plain["auc"] - 0.05
    assert secagg["tpr_at_fpr"]["0.01"] < 0.5
    assert secagg["eps_lb"] < plain["eps_lb"]


def test_dp_view_stays_within_the_accountant(strong):
    view = strong["views"]["secagg-dp"]
    params = DPParams(mechanism="ddg", clip=2.0, noise_multiplier=1.0, granularity_bits=10, dim=500 * 10,
                      num_classes=10, num_clients=10, min_honest=10, bit_width=32, wrap_probability=1e-9)
    expected = Ledger(1e-5).record(params, honest=10)
    assert view["accountant_epsilon"] == pytest.approx(expected, rel=1e-12)
    assert strong["dp"]["accountant_epsilon"] == view["accountant_epsilon"]
    assert view["membership"]["eps_lb"] <= view["accountant_epsilon"]
    assert view["membership"]["auc"] < strong["views"]["plain"]["membership"]["auc"]


def test_label_inference_beats_the_prior_on_the_target_vector(strong):
    for name in ("plain", "secagg-known-others"):
        label = strong["views"][name]["label_inference"]
        assert label["kl"] < label["baseline_kl"] / 2
    secagg = strong["views"]["secagg"]["label_inference"]
    assert secagg["kl"] > strong["views"]["plain"]["label_inference"]["kl"]  # only the ensemble is visible


def test_trials_cover_the_request_and_halves_hold_both_kinds(strong):
    s = strong["setting"]
    assert (s["runs"], s["trials"]) == (6, 300)
    d = strong["views"]["plain"]["membership"]["eps_lb_detail"]
    assert d["in"] + d["out"] in (150, 151)  # IN and OUT are halved separately; odd counts give the test half one more
    assert abs(d["in"] - d["out"]) < 20  # each canary is IN with probability 1/2
    json.dumps(strong, allow_nan=False)  # the result is plain JSON


def test_clean_release_is_what_a_round_one_client_sends():
    from fedkd.task import teacher_round

    setting = audit.prepare(clients=10, seed=0, local_epochs=3)
    m, k = len(setting.splits.public_y), setting.splits.num_classes
    for pid in (0, 3):
        sent = teacher_round(setting.config, pid, 1, None).vector[: m * k]
        np.testing.assert_allclose(audit.clean_release(setting, pid), sent, rtol=0, atol=1e-7)


def test_same_seed_same_audit():
    options = dict(view="secagg-dp", canaries=20, canaries_per_run=10, local_epochs=2, dp_mechanism="skellam")
    first, second = audit.run_audit(**options), audit.run_audit(**options)
    first.pop("seconds"), second.pop("seconds")
    assert first == second


def test_clopper_pearson_upper_bound():
    # 0 events in n: the bound solves (1 - p)^n = alpha
    assert audit_stats.clopper_pearson_upper(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-9)
    assert audit_stats.clopper_pearson_upper(0, 100, 0.05) == pytest.approx(0.029513, abs=1e-6)
    # in general P(Bin(n, upper) <= k) = alpha
    upper = audit_stats.clopper_pearson_upper(7, 250, 0.01)
    assert stats.binom.cdf(7, 250, upper) == pytest.approx(0.01, rel=1e-6)
    assert audit_stats.clopper_pearson_upper(5, 5, 0.05) == 1.0


def test_epsilon_lower_bound_formula():
    assert audit_stats.epsilon_lower_bound(0.01, 0.5, 0.0) == pytest.approx(math.log(50))
    assert audit_stats.epsilon_lower_bound(0.5, 0.01, 0.0) == pytest.approx(math.log(50))
    assert audit_stats.epsilon_lower_bound(0.6, 0.6, 1e-5) == 0.0  # a test no better than chance proves nothing


def test_membership_attack_on_separated_scores_reaches_the_counting_limit():
    """Perfectly separated scores: eps_lb is what zero errors among ~n/4 test trials allow."""
    rng = np.random.default_rng(0)
    member = rng.random(400) < 0.5
    scores = np.where(member, 5.0, 0.0) + rng.normal(0, 0.1, 400)
    result = audit_stats.membership_attack(scores, member, seed=0, delta=1e-5)
    d = result["eps_lb_detail"]
    assert (d["false_positives"], d["false_negatives"]) == (0, 0)
    alpha = (1 - audit_stats.CONFIDENCE) / (2 * audit_stats.EPS_THRESHOLDS)
    fpr_ub, fnr_ub = 1 - alpha ** (1 / d["out"]), 1 - alpha ** (1 / d["in"])
    assert result["eps_lb"] == pytest.approx(max(math.log((1 - 1e-5 - fnr_ub) / fpr_ub),
                                                 math.log((1 - 1e-5 - fpr_ub) / fnr_ub)))
    assert result["auc"] == 1.0 and result["tpr_at_fpr"]["0.001"] == 1.0


def _parse(argv):
    parser = argparse.ArgumentParser(prog="fedkd audit")
    audit_cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--view", "everything"], "view 'everything' is unknown"),
        (["--canaries", "10"], "--canaries 10 is too few"),
        (["--canaries-per-run", "0"], "--canaries-per-run 0"),
        (["--canaries-per-run", "501"], "exceeds the 500 public examples"),
        (["--clients", "1"], "--clients 1"),
        (["--delta", "1.5"], "--delta 1.5"),
        (["--dp-noise-multiplier", "0"], "--dp-noise-multiplier 0"),
        (["--dp-mechanism", "laplace"], "dp mechanism 'laplace' is unknown"),
        (["--dp-clip", "-1"], "dp clip must be > 0"),
        (["--temperature", "0"], "temperature=0.0 must be > 0"),
        (["--local-epochs", "-1"], "local-epochs=-1"),
    ],
)
def test_bad_input_is_one_line(argv, fragment, capsys, tmp_path):
    out = tmp_path / "audit"
    assert audit_cli.main(_parse(["--out", str(out), *argv])) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("fedkd audit: error: ") and fragment in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.out == "" and not out.exists()  # nothing ran, nothing written


def test_json_output_and_files(capsys, tmp_path):
    code = audit_cli.main(_parse(["--json", "--out", str(tmp_path), "--view", "plain", "--canaries", "20",
                                  "--canaries-per-run", "10", "--local-epochs", "1"]))
    assert code == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert captured.err == ""  # no progress bar with --json
    assert list(printed["views"]) == ["plain"]
    assert json.loads((tmp_path / "audit.json").read_text()) == printed
    assert (tmp_path / "audit_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dp_view_bound_can_catch_too_little_noise():
    # With 300 trials even a perfect attack certifies at most epsilon 2.72, above the accountant's
    # epsilon at z=3 but below it at z=1: only at z=3 can the comparison fail. The control at
    # z=0.01 shows the attack would cross that line if the noise were (nearly) missing.
    options = dict(STRONG, view="secagg-dp")
    noisy = audit.run_audit(**options, dp_noise_multiplier=3.0)["views"]["secagg-dp"]
    weak = audit.run_audit(**options, dp_noise_multiplier=0.01)["views"]["secagg-dp"]
    assert noisy["accountant_epsilon"] < 2.0
    assert noisy["membership"]["eps_lb"] <= noisy["accountant_epsilon"]
    assert weak["membership"]["eps_lb"] > noisy["accountant_epsilon"]
    assert weak["membership"]["auc"] > 0.9 > 0.65 > noisy["membership"]["auc"]
