"""Distributed DP: the exact samplers against their target laws, the client encoding and server
decoding, and the accountant against published closed forms and Flower's own accountant."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from fedkd.privacy import accounting, mechanism
from fedkd.privacy.accounting import Ledger, calibrate, epsilon_from_rdp, round_rdp
from fedkd.privacy.mechanism import DPParams, PrivacyError, Variance, decode_sum, encode
from fedkd.secagg import SecAggConfig, run_in_memory


def _params(**changes) -> DPParams:
    base = dict(mechanism="ddg", clip=1.0, noise_multiplier=1.0, granularity_bits=10, dim=400, num_classes=4,
                num_clients=10, min_honest=10, bit_width=32, wrap_probability=1e-9)
    base.update(changes)
    return DPParams(**base)


def _chi_square_p(samples: np.ndarray, pmf) -> float:
    """Goodness of fit of integer samples to `pmf(k)`, with tail bins merged to >= 5 expected."""
    lo, hi = int(samples.min()), int(samples.max())
    ks = np.arange(lo, hi + 1)
    expected = pmf(ks) * len(samples)
    expected *= len(samples) / expected.sum()  # mass outside the seen range is negligible here
    observed = np.bincount(samples - lo, minlength=len(ks)).astype(float)
    bins_o, bins_e, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 5:
            bins_o.append(acc_o), bins_e.append(acc_e)
            acc_o = acc_e = 0.0
    bins_o[-1] += acc_o
    bins_e[-1] += acc_e
    return float(stats.chisquare(bins_o, bins_e).pvalue)


def _discrete_gaussian_pmf(sigma2: float):
    support = np.arange(-int(40 * math.sqrt(sigma2)) - 10, int(40 * math.sqrt(sigma2)) + 11)
    norm = np.exp(-support.astype(float) ** 2 / (2 * sigma2)).sum()
    return lambda k: np.exp(-k.astype(float) ** 2 / (2 * sigma2)) / norm


@pytest.mark.parametrize("sigma2", [0.7, 3.0, 40.0, 2.5e5])
def test_discrete_gaussian_sampler_fits_its_law(sigma2):
    rng = np.random.default_rng(7)
    samples = mechanism.discrete_gaussian(rng, Variance.at_least(sigma2), 40_000)
    assert _chi_square_p(samples, _discrete_gaussian_pmf(sigma2)) > 1e-3


def test_discrete_gaussian_python_integer_path_agrees():
    """Variances too large for int64 go through Python integers; the law must be the same."""
    sigma2 = 4e9
    samples = mechanism.discrete_gaussian(np.random.default_rng(3), Variance.at_least(sigma2), 4000)
    z = samples / math.sqrt(sigma2)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.var() - 1) < 0.1


def test_discrete_laplace_sampler_fits_its_law():
    t = 3
    samples = mechanism.discrete_laplace(np.random.default_rng(1), t, 40_000)
    pmf = lambda k: (1 - math.exp(-1 / t)) / (1 + math.exp(-1 / t)) * np.exp(-np.abs(k) / t)
    assert _chi_square_p(samples, pmf) > 1e-3


def test_bernoulli_exp_neg_matches_its_probability():
    rng = np.random.default_rng(2)
    for num, den in [(0, 5), (1, 3), (7, 2)]:
        hits = mechanism.bernoulli_exp_neg(rng, np.full(100_000, num, np.int64), den).mean()
        assert abs(hits - math.exp(-num / den)) < 5 * math.sqrt(math.exp(-num / den) / 100_000) + 1e-3


def test_skellam_sampler_fits_its_law():
    mu = 6.0
    samples = mechanism.skellam(np.random.default_rng(5), mu, 40_000)
    assert _chi_square_p(samples, lambda k: stats.skellam.pmf(k, mu, mu)) > 1e-3


def test_variance_is_rounded_up_never_down():
    for value in [0.3, 1.0, 7.123456789, 3.3e7]:
        v = Variance.at_least(value)
        assert v.value >= value and v.value - value <= value * 2**-20


def test_conditional_rounding_meets_the_inflated_sensitivity():
    params = _params(noise_multiplier=0.0, clip=0.5, granularity_bits=4, dim=400)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4) * 0.3, size=100)  # (100, 4): norms well above the clip
    for _ in range(20):
        enc = encode(probs, params, rng)
        assert enc.clipped
        assert np.linalg.norm(enc.values) <= params.l2 + 1e-9
    assert params.l2 > 2**4  # rounding inflates the sensitivity above c / gamma


def test_no_noise_on_the_grid_reproduces_the_exact_secure_sum():
    """z = 0 and inputs on the grid: the DP pipeline through real secure aggregation gives back
    exactly the plain sum of the clipped vectors."""
    params = _params(noise_multiplier=0.0, clip=1.0, granularity_bits=10, dim=8 * 4, num_clients=3, min_honest=3)
    rng = np.random.default_rng(4)
    vectors, clean = {}, np.zeros(params.dim)
    for cid in range(3):
        counts = rng.multinomial(1024, np.ones(4) / 4, size=8)  # rows on the 2^-10 grid summing to 1
        probs = counts / 1024.0
        clean += probs.ravel()
        vectors[cid] = encode(probs, params, rng).values
        assert np.linalg.norm(probs - 0.25) <= params.clip  # nothing was clipped
    config = SecAggConfig(clip=float(params.value_range), scale=1.0, bit_width=params.bit_width)
    result = run_in_memory(vectors, config)
    assert result.clipped == 0
    np.testing.assert_array_equal(decode_sum(result.sum, 3, params), clean)


def test_noisy_sum_has_the_target_noise():
    """Ten clients' shares sum to noise of std z * Delta_2 (in integer units)."""
    params = _params(noise_multiplier=0.5, dim=4000, num_clients=10, min_honest=10)
    rng = np.random.default_rng(9)
    probs = np.full((1000, 4), 0.25)  # centred: all zeros, so the sum is pure noise
    total = sum(encode(probs, params, rng).values for _ in range(10))
    assert abs(total.std() / params.total_std - 1) < 0.05


def test_noise_is_sized_for_the_tolerated_dropouts():
    full = _params(min_honest=10)
    tolerant = _params(min_honest=7)
    assert math.isclose(tolerant.honest_std(7), full.total_std)
    assert tolerant.client_variance > full.client_variance


def test_bit_width_too_small_for_the_noisy_sum_is_refused():
    with pytest.raises(PrivacyError, match="secagg-bit-width"):
        _params(noise_multiplier=5.0, granularity_bits=16, bit_width=20)


def test_too_many_tolerated_dropouts_is_refused():
    with pytest.raises(PrivacyError, match="honest"):
        _params(min_honest=0)


# ---- accounting ---------------------------------------------------------------------------

def _gaussian_exact_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a Gaussian mechanism with sensitivity/sigma = mu (Balle & Wang 2018;
    Dong, Roth & Su 2019): delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    def delta_at(eps):
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_at(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("z,rounds", [(0.8, 1), (2.0, 5), (5.0, 50)])
def test_ddg_accounting_lies_between_the_exact_gaussian_and_the_zcdp_closed_form(z, rounds):
    """With shares of a few units or more the discrete Gaussian's bound is the Gaussian's, so the
    accountant's epsilon must sit between the exact Gaussian epsilon (no bound can beat it) and
    Bun & Steinke's rho + 2 sqrt(rho ln(1/delta)) for rho-zCDP, rho = rounds / (2 z^2)."""
    params = _params(noise_multiplier=z)
    delta = 1e-5
    ledger = Ledger(delta)
    for _ in range(rounds):
        eps = ledger.record(params, honest=10)
    rho = rounds / (2 * z**2)
    upper = rho + 2 * math.sqrt(rho * math.log(1 / delta))
    exact = _gaussian_exact_epsilon(math.sqrt(rounds) / z, delta)
    assert exact <= eps <= upper
    assert eps < 1.25 * exact + 0.1  # and not needlessly loose


def test_ddg_accounting_matches_flowers_rdp_accountant():
    from flwr.serverapp import GaussianPrivacyEvent, PrivacyConfig, RdpAccountant
    from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod

    params = _params(noise_multiplier=1.3)
    flower = RdpAccountant(PrivacyConfig(1e-5, 10, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION))
    effective_z = params.honest_std(10) / params.l2
    flower.compose(GaussianPrivacyEvent(effective_z, 10, 10), count=4)
    ours = Ledger(1e-5)
    for _ in range(4):
        ours.record(params, honest=10)
    assert ours.epsilon == pytest.approx(flower.get_epsilon(1e-5), rel=1e-6)


def test_fewer_honest_clients_cost_more():
    params = _params(min_honest=6)
    assert Ledger(1e-5).epsilon_after(params, 6) > Ledger(1e-5).epsilon_after(params, 10)


def test_skellam_costs_a_little_more_than_the_discrete_gaussian_and_converges_to_it():
    ddg = epsilon_from_rdp(round_rdp(_params(noise_multiplier=1.0), 10), 1e-5)
    sk = epsilon_from_rdp(round_rdp(_params(noise_multiplier=1.0, mechanism="skellam"), 10), 1e-5)
    assert ddg <= sk <= ddg * 1.01


def test_ledger_budget_check_and_zero_noise_is_infinite():
    params = _params(noise_multiplier=2.0)
    ledger = Ledger(1e-5, budget=3.0)
    spent = [ledger.record(params, 10) for _ in range(3)]
    assert spent == sorted(spent)
    assert ledger.would_exceed(params) == (ledger.epsilon_after(params, 10) > 3.0)
    assert Ledger(1e-5).epsilon_after(_params(noise_multiplier=0.0), 10) == math.inf


def test_calibration_hits_the_target_epsilon():
    build = lambda z: _params(noise_multiplier=z)
    z = calibrate(build, rounds=5, honest=10, target_epsilon=4.0, delta=1e-5)
    eps = epsilon_from_rdp(5 * round_rdp(build(z), 10), 1e-5)
    assert 3.95 <= eps <= 4.0
    assert accounting.epsilon_from_rdp(5 * round_rdp(build(z * 0.99), 10), 1e-5) > 4.0 - 1e-9


def test_target_epsilon_picks_the_smallest_noise_that_fits_all_rounds():
    from fedkd.config import Config
    from fedkd.task import dp_params, noise_multiplier_for

    cfg = Config(dp_clip=1.0, dp_target_epsilon=6.0, rounds=4, public_sample=25, dp_max_dropouts=1,
                 dp_colluders=1).validated()
    z = noise_multiplier_for(cfg, 10)
    params = dp_params(cfg, 10, 3)
    assert params.noise_multiplier == z and params.min_honest == 8

    def spent(multiplier):
        ledger = Ledger(cfg.dp_delta)
        for r in range(1, cfg.rounds + 1):
            ledger.record(dataclasses.replace(dp_params(cfg, 10, r), noise_multiplier=multiplier), params.min_honest)
        return ledger.epsilon

    assert spent(z) <= 6.0 < spent(z * 0.99)  # enough noise, and not much more than enough
