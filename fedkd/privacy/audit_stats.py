"""The statistics of `fedkd audit`: what its attacks compute from released numbers.

Owns: the label-histogram estimate and its KL divergence, the global Gaussian likelihood-ratio
test, the split of trials into a fit half and a test half, AUC and TPR at fixed FPR, one-sided
Clopper-Pearson bounds and the empirical epsilon lower bound, and `AuditError`. Must not touch:
torch, Flower, fedkd's training or data (`tests/test_audit_stats_purity.py` keeps it so): it
takes arrays and seeds and returns numbers. numpy at import; scipy's beta quantile and normal
log-density and scikit-learn's ROC are imported inside the functions that use them (numerical
libraries, no torch: a re-implementation would move the audit's numbers in their last bits).

Scoring: a parametric likelihood-ratio test after LiRA (Carlini et al. 2022, "Membership
Inference Attacks From First Principles") in a *global* form: one Gaussian for IN scores and one
for OUT scores, each fitted (mean and variance) over all canaries of the fit half, and the
statistic log N(s; mu_in, sd_in) - log N(s; mu_out, sd_out). It is neither LiRA's online variant
(per-canary IN and OUT Gaussians from shadow models) nor its offline one (per-canary OUT means
from shadow models, one global variance): there are no shadow models, so the means are pooled
over canaries as well as the variances. Trials are split in half by a seeded permutation, done
separately within IN and within OUT so both halves hold both kinds; the test is fitted on the
first half and everything reported is measured on the second.

Reported on the second half: AUC; TPR at FPR 1% and 0.1%, read conservatively from the empirical
ROC (no interpolation: the TPR of the loosest threshold whose empirical FPR is <= the target);
and an empirical epsilon lower bound (Jagielski et al. 2020, "Auditing Differentially Private
Machine Learning"; Nasr et al. 2021, "Adversary Instantiation"): the EPS_THRESHOLDS thresholds
with the best bound on the first half are carried over; on the second half, FP among OUT and FN
among IN get one-sided Clopper-Pearson upper bounds, and

    eps_lb = max( log((1 - delta - FNR_ub) / FPR_ub), log((1 - delta - FPR_ub) / FNR_ub), 0 )

maximised over those thresholds. The 2 * EPS_THRESHOLDS bounds share the 5% error (Bonferroni),
so the bound holds at 95% confidence jointly.

Caveat: the canaries of one run share one trained model, so they are not independent trials in
the classical sense the Clopper-Pearson computation assumes. Steinke, Nasr & Jagielski (2023,
"Privacy Auditing with One (1) Training Run") show that independent random inclusion is what a
lower bound needs: under (eps, delta)-DP the number of correct membership guesses over many
canaries of one run is dominated by a binomial with success rate e^eps / (1 + e^eps) (plus a
delta term), so counting errors across canaries of a run remains sound in their form; the bound
here is the classical formula, not their exact theorem. `--canaries-per-run 1` gives classical
independent trials (one run per canary) at a higher cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedkd.errors import UserError

FPR_TARGETS = (0.01, 0.001)
CONFIDENCE = 0.95
EPS_THRESHOLDS = 3  # thresholds carried from the fit half to the test half (Bonferroni over 2x this)
SMOOTH = 1e-3  # added to histograms before KL, so absent classes give finite values


class AuditError(UserError):
    """A bad audit option; the message names the option, the value and what is allowed."""


def clopper_pearson_upper(k, n, alpha: float):
    """One-sided Clopper-Pearson upper bound on a binomial rate at confidence 1 - alpha, from k
    events in n trials: the p with P(Bin(n, p) <= k) = alpha (1 when k = n). Vectorised over k, n."""
    from scipy.stats import beta

    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    full = k >= n
    upper = beta.ppf(1 - alpha, k + 1, np.where(full, 1.0, n - k))  # dummy b where k = n
    return np.where(full, 1.0, upper)


def epsilon_lower_bound(fpr_ub, fnr_ub, delta: float):
    """The epsilon any (eps, delta)-DP mechanism must have for a test with these error rates:
    FPR + e^eps FNR >= 1 - delta and FNR + e^eps FPR >= 1 - delta (Kairouz et al. 2015), so
    eps >= max(log((1 - delta - FNR) / FPR), log((1 - delta - FPR) / FNR), 0). Vectorised."""
    fpr_ub, fnr_ub = np.asarray(fpr_ub, dtype=np.float64), np.asarray(fnr_ub, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.maximum(1 - delta - fnr_ub, 0.0) / fpr_ub)
        b = np.log(np.maximum(1 - delta - fpr_ub, 0.0) / fnr_ub)
    return np.maximum(np.nan_to_num(np.maximum(a, b), nan=0.0, neginf=0.0), 0.0)


def kl_divergence(p: np.ndarray, q: np.ndarray, smooth: float = SMOOTH) -> float:
    """KL(p || q) in nats after adding `smooth` to both (K,) histograms and renormalising."""
    p = (p + smooth) / (p + smooth).sum()
    q = (q + smooth) / (q + smooth).sum()
    return float(np.sum(p * np.log(p / q)))


def label_estimate(rows: np.ndarray) -> np.ndarray:
    """(m, K) released rows -> (K,) estimated label histogram: clamp at 0, renormalise each row
    (a row that clamps to all zeros counts as uniform), mean over rows."""
    rows = np.clip(np.asarray(rows, dtype=np.float64), 0.0, None)
    sums = rows.sum(axis=1, keepdims=True)
    rows = np.where(sums > 0, rows / np.where(sums > 0, sums, 1.0), 1.0 / rows.shape[1])
    return rows.mean(axis=0)


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of released probabilities (trials,), clamped to [1e-12, 1 - 1e-12] first:
    the Gaussians of the test fit logits of a probability better than the probability itself."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class GaussianLRT:
    """log N(s; mu_in, sd_in) - log N(s; mu_out, sd_out): larger means 'more likely IN'."""

    mu_in: float
    sd_in: float
    mu_out: float
    sd_out: float

    @classmethod
    def fit(cls, scores: np.ndarray, member: np.ndarray) -> "GaussianLRT":
        def moments(s: np.ndarray) -> tuple[float, float]:
            return float(s.mean()), max(float(s.std(ddof=1)), 1e-9)  # floor: a constant group still scores

        return cls(*moments(scores[member]), *moments(scores[~member]))

    def __call__(self, s: np.ndarray) -> np.ndarray:
        from scipy.stats import norm

        return norm.logpdf(s, self.mu_in, self.sd_in) - norm.logpdf(s, self.mu_out, self.sd_out)


def _errors(stat: np.ndarray, member: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FP, FN) counts of 'IN iff stat >= threshold' for each threshold."""
    s_in, s_out = np.sort(stat[member]), np.sort(stat[~member])
    fp = len(s_out) - np.searchsorted(s_out, thresholds, side="left")
    fn = np.searchsorted(s_in, thresholds, side="left")
    return fp, fn


def split_halves(member: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the fit half and the test half: a permutation seeded by `seed`, within IN and
    within OUT."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for group in (np.flatnonzero(member), np.flatnonzero(~member)):
        group = rng.permutation(group)
        first.append(group[: len(group) // 2])
        second.append(group[len(group) // 2 :])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def membership_attack(scores: np.ndarray, member: np.ndarray, seed: int, delta: float) -> dict:
    """Fit the Gaussian test on one half, report AUC, TPR at FPR_TARGETS and eps_lb on the other.
    scores, member: (trials,); `seed` seeds the split into halves (`split_halves`)."""
    from sklearn.metrics import auc, roc_curve

    first, second = split_halves(member, seed)
    for name, half in (("fit", first), ("test", second)):
        n_in = int(member[half].sum())
        if min(n_in, len(half) - n_in) < 2:
            raise AuditError(f"the {name} half holds {n_in} IN and {len(half) - n_in} OUT canaries; "
                             "at least 2 of each are needed: raise --canaries")
    test = GaussianLRT.fit(scores[first], member[first])
    stat1, stat2 = test(scores[first]), test(scores[second])
    m1, m2 = member[first], member[second]
    alpha = (1 - CONFIDENCE) / (2 * EPS_THRESHOLDS)

    # thresholds: midpoints between the fit half's distinct statistics, and beyond both ends
    u = np.unique(stat1)
    candidates = np.concatenate([[u[0] - 1.0], (u[1:] + u[:-1]) / 2, [u[-1] + 1.0]])
    fp, fn = _errors(stat1, m1, candidates)
    n_in1, n_out1 = int(m1.sum()), int((~m1).sum())
    fit_bound = epsilon_lower_bound(clopper_pearson_upper(fp, n_out1, alpha), clopper_pearson_upper(fn, n_in1, alpha), delta)
    chosen = candidates[np.argsort(-fit_bound, kind="stable")[:EPS_THRESHOLDS]]

    n_in2, n_out2 = int(m2.sum()), int((~m2).sum())
    fp, fn = _errors(stat2, m2, chosen)
    fpr_ub, fnr_ub = clopper_pearson_upper(fp, n_out2, alpha), clopper_pearson_upper(fn, n_in2, alpha)
    bounds = epsilon_lower_bound(fpr_ub, fnr_ub, delta)
    best = int(np.argmax(bounds))

    fpr, tpr, _ = roc_curve(m2, stat2, drop_intermediate=False)
    tpr_at = {f"{t:g}": float(tpr[fpr <= t].max()) for t in FPR_TARGETS}  # fpr[0] = 0 always exists
    fpr_small, tpr_small, _ = roc_curve(m2, stat2, drop_intermediate=True)  # same curve, fewer points
    return {
        "auc": float(auc(fpr, tpr)),
        "tpr_at_fpr": tpr_at,
        "eps_lb": float(bounds[best]),
        "eps_lb_detail": {
            "false_positives": int(fp[best]), "out": n_out2, "fpr_upper": float(fpr_ub[best]),
            "false_negatives": int(fn[best]), "in": n_in2, "fnr_upper": float(fnr_ub[best]),
            "thresholds_tried": EPS_THRESHOLDS, "confidence": CONFIDENCE,
        },
        "gaussians": {"in": [test.mu_in, test.sd_in], "out": [test.mu_out, test.sd_out]},
        "roc": {"fpr": [round(float(v), 6) for v in fpr_small], "tpr": [round(float(v), 6) for v in tpr_small]},
    }
