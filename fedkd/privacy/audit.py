"""`fedkd audit`: attack exactly what the server receives, and set the result against what the
privacy accountant promises.

Owns: the audit scenario (one fd release of soft labels on the whole public set, target client
0), the four server views of that release, the two attacks, their statistics (Gaussian
likelihood-ratio scores, ROC, Clopper-Pearson bounds, the empirical epsilon lower bound) and the
command's table, JSON and ROC plot. Must not touch: Flower, secure-aggregation messaging, or the
mechanism and the accountant themselves (it calls `fedkd.privacy.mechanism` and `.accounting`).

The release. Every client i trains its teacher as `fedkd.task.teacher_round` does in round 1
(same init seed, same shuffle generator) and releases v_i = softmax(z_i / T) on the m public
queries, an (m, K) matrix read as a (d = m*K,) vector. What the server sees, per view:

    plain                 v_0                          (no secure aggregation)
    secagg                S = sum_i v_i                (it knows nothing about the others)
    secagg-known-others   S - sum_{j != 0} v_j = v_0   (it knows or rebuilt the others' vectors)
    secagg-dp             decode_sum(sum_i encode(v_i)) - sum_{j != 0} (clip(v_j - 1/K) + 1/K)
                          = clip(v_0 - 1/K) + 1/K + every client's rounding error + all the noise

For secagg-dp each client runs `mechanism.encode` with its own secret generator and the server
decodes the sum; the strongest server that colludes with no client then removes the others'
clean clipped vectors, which it cannot do better than exactly. The accountant's epsilon for one
such release is `Ledger(delta).record(params, honest=n)`: client-level DP (a whole client's
vector added or removed), so it also bounds the example-level attacks below.

Attack 1, label-distribution inference. The server estimates the target's label histogram as the
mean over queries of the rows it can attribute to the target (clamped at 0, each row renormalised;
for `secagg` the rows of S/n: only the ensemble can be attributed). Reported: KL(true || estimate)
and the baseline KL(true || public-set class prior), both after adding 1e-3 and renormalising.

Attack 2, membership inference with canaries. A canary is a public query x_c with a random wrong
label y_c. In each training run of the target's teacher, `canaries_per_run` distinct public
indices are drawn and each canary joins the target's private data independently with probability
1/2 (IN); the teacher is retrained from the same init (a fresh shuffle seed per run), released,
and each canary is scored by the released value at coordinate (c, y_c): the target's probability
for plain and known-others (logit-transformed), the sum's coordinate for secagg and the decoded
noisy coordinate for secagg-dp (raw: they are not probabilities, and the DP one can be negative).
The other clients' vectors do not depend on the canaries, so they are trained once; all four
views are derived from the same runs.

Scoring: a parametric likelihood-ratio test after LiRA (Carlini et al. 2022, "Membership
Inference Attacks From First Principles") in a *global* form: one Gaussian for IN scores and one
for OUT scores, each fitted (mean and variance) over all canaries of the fit half, and the
statistic log N(s; mu_in, sd_in) - log N(s; mu_out, sd_out). It is neither LiRA's online variant
(per-canary IN and OUT Gaussians from shadow models) nor its offline one (per-canary OUT means
from shadow models, one global variance): there are no shadow models, so the means are pooled
over canaries as well as the variances. Trials are split in half by a seeded permutation, done
separately within IN and within OUT so both halves hold both kinds; the test is fitted on the
first half and everything reported is measured on the second. The attack measures memorisation:
a teacher that does not fit its own data (few examples, few epochs) leaks little in any view, so
the default trains for 100 local epochs (`fedkd run` uses 20): an audit should assume the teacher
fits, and with 20 epochs the plain attack drops to AUC 0.77 (seed 0).

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

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from fedkd.errors import UserError, report, require_clients

if TYPE_CHECKING:  # torch and the data stack load only when an audit runs, not when the CLI parses
    import torch

    from fedkd.config import Config
    from fedkd.data import Splits
    from fedkd.privacy.mechanism import DPParams

VIEWS = ("plain", "secagg", "secagg-known-others", "secagg-dp")
SEES = {
    "plain": "v_0: the target's own soft labels",
    "secagg": "S = sum of all n clients' soft labels",
    "secagg-known-others": "S minus the others' vectors (= v_0)",
    "secagg-dp": "noisy sum minus the others' clean clipped vectors",
}
LOGIT_VIEWS = ("plain", "secagg-known-others")  # scores are probabilities there: fit Gaussians to logits
TARGET = 0  # the audited client
FPR_TARGETS = (0.01, 0.001)
CONFIDENCE = 0.95
EPS_THRESHOLDS = 3  # thresholds carried from the fit half to the test half (Bonferroni over 2x this)
SMOOTH = 1e-3  # added to histograms before KL, so absent classes give finite values
MIN_CANARIES = 20
GRANULARITY_BITS = 10
BIT_WIDTH = 32
WRAP_PROBABILITY = 1e-9


class AuditError(UserError):
    """A bad audit option; the message names the option, the value and what is allowed."""


# ---- statistics -------------------------------------------------------------------------------

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
    """Indices of the fit half and the test half: a seeded permutation within IN and within OUT."""
    from fedkd.task import derive_seed

    rng = np.random.default_rng(derive_seed(seed, "audit", "halves"))
    first, second = [], []
    for group in (np.flatnonzero(member), np.flatnonzero(~member)):
        group = rng.permutation(group)
        first.append(group[: len(group) // 2])
        second.append(group[len(group) // 2 :])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def membership_attack(scores: np.ndarray, member: np.ndarray, seed: int, delta: float) -> dict:
    """Fit the Gaussian test on one half, report AUC, TPR at FPR_TARGETS and eps_lb on the other.
    scores, member: (trials,)."""
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


# ---- the scenario -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """Validated options and everything built from them before any training."""

    views: tuple[str, ...]
    canaries: int
    canaries_per_run: int
    runs: int
    delta: float
    config: Config
    splits: Splits
    params: DPParams
    accountant_epsilon: float


def prepare(
    *,
    view: str = "all",
    clients: int = 10,
    canaries: int = 1000,
    canaries_per_run: int = 50,
    seed: int = 0,
    dp_noise_multiplier: float = 1.0,
    dp_clip: float = 2.0,
    delta: float = 1e-5,
    dp_mechanism: str = "ddg",
    temperature: float = 3.0,
    local_epochs: int = 100,
) -> Setting:
    """Check every option and build the data, DP parameters and accountant's epsilon; raises
    AuditError (one line) on bad input, before anything is trained or written."""
    from fedkd.config import Config, ConfigError
    from fedkd.data import DataError
    from fedkd.privacy.accounting import Ledger
    from fedkd.privacy.mechanism import DPParams, PrivacyError
    from fedkd.task import splits_for

    if view != "all" and view not in VIEWS:
        raise AuditError(f"view '{view}' is unknown; choose one of {', '.join(VIEWS)}, all")
    require_clients("--clients", clients)
    if canaries < MIN_CANARIES:
        raise AuditError(f"--canaries {canaries} is too few; use at least {MIN_CANARIES}")
    if canaries_per_run < 1:
        raise AuditError(f"--canaries-per-run {canaries_per_run} must be at least 1")
    if seed < 0:
        raise AuditError(f"--seed {seed} must be >= 0")
    if not (math.isfinite(dp_noise_multiplier) and dp_noise_multiplier > 0):
        raise AuditError(f"--dp-noise-multiplier {dp_noise_multiplier} must be > 0 (the audit compares with the accountant)")
    if not 0 < delta < 1:
        raise AuditError(f"--delta {delta} must lie in (0, 1)")
    try:
        # vote-weighting none: what a client releases under distributed DP (auto resolves to it there)
        config = Config().replace(num_clients=clients, seed=seed, temperature=temperature,
                                  local_epochs=local_epochs, device="cpu", vote_weighting="none")
        splits = splits_for(config)
        if canaries_per_run > len(splits.public_y):
            raise AuditError(f"--canaries-per-run {canaries_per_run} exceeds the {len(splits.public_y)} public examples")
        params = DPParams(mechanism=dp_mechanism, clip=dp_clip, noise_multiplier=dp_noise_multiplier,
                          granularity_bits=GRANULARITY_BITS, dim=len(splits.public_y) * splits.num_classes,
                          num_classes=splits.num_classes, num_clients=clients, min_honest=clients,
                          bit_width=BIT_WIDTH, wrap_probability=WRAP_PROBABILITY)
        epsilon = Ledger(delta).record(params, honest=clients)
    except (ConfigError, DataError, PrivacyError) as exc:
        raise AuditError(str(exc)) from None
    return Setting(VIEWS if view == "all" else (view,), canaries, canaries_per_run,
                   math.ceil(canaries / canaries_per_run), delta, config, splits, params, epsilon)


def _release(setting: Setting, pid: int, x: np.ndarray, y: np.ndarray, model_seed: int,
             shuffle: torch.Generator) -> np.ndarray:
    """Train client `pid`'s teacher from its seeded init on (x, y) and return its (d,) float64
    release on the whole public set, as `fedkd.task.teacher_round` computes it."""
    import torch

    from fedkd import distill
    from fedkd.models import build_model

    config, splits, cpu = setting.config, setting.splits, torch.device("cpu")
    with torch.random.fork_rng(devices=[]):  # the seeded init must not disturb the caller's global RNG
        torch.manual_seed(model_seed)
        model = build_model(config.teacher_model_for(pid), splits.input_shape, splits.num_classes)
    distill.train_supervised(model, x, y, epochs=config.local_epochs, lr=config.lr,
                             batch_size=config.batch_size, generator=shuffle, device=cpu)
    logits = distill.predict_logits(model, splits.public_x, cpu)  # (m, K)
    return distill.client_payload(logits, "mean", config.temperature).ravel().astype(np.float64)


def clean_release(setting: Setting, pid: int) -> np.ndarray:
    """(d,) client `pid`'s release without canaries: round 1 of `fedkd run`, with
    `fedkd.task.teacher_round`'s init seed and shuffle generator."""
    from fedkd.task import derive_seed, generator

    seed = setting.config.seed
    x, y = setting.splits.client(pid)
    return _release(setting, pid, x, y, derive_seed(seed, "init", pid), generator(seed, "client", pid, 1))


def _clipped(v: np.ndarray, clip: float, num_classes: int) -> np.ndarray:
    """What a client contributes without noise or rounding: 1/K + (v - 1/K) clipped to L2 norm `clip`."""
    q = v - 1.0 / num_classes
    return 1.0 / num_classes + q * min(1.0, clip / max(float(np.linalg.norm(q)), 1e-300))


def _dp_view(target: np.ndarray, others: list[np.ndarray], others_clean: np.ndarray, setting: Setting, *tag) -> np.ndarray:
    """One distributed-DP release, seen by the server after removing the others' clean clipped
    vectors: (d,) = the target's clipped vector + all rounding errors + all noise."""
    from fedkd.privacy.mechanism import decode_sum, encode
    from fedkd.task import derive_seed

    total = np.zeros(setting.params.dim)
    for pid, v in enumerate([target, *others]):  # pid 0 is the target
        rng = np.random.default_rng(derive_seed(setting.config.seed, "audit", "dp", *tag, pid))  # each client's secret
        total += encode(v, setting.params, rng).values
    return decode_sum(total, len(others) + 1, setting.params) - others_clean


def _views(target: np.ndarray, others_sum: np.ndarray, others: list[np.ndarray], others_clean: np.ndarray,
           setting: Setting, *tag) -> dict[str, np.ndarray]:
    """(d,) what the server sees in each requested view, for one release of `target`."""
    out = {}
    for view in setting.views:
        if view == "plain":
            out[view] = target
        elif view == "secagg":
            out[view] = target + others_sum
        elif view == "secagg-known-others":
            out[view] = (target + others_sum) - others_sum  # the subtraction the server does
        else:
            out[view] = _dp_view(target, others, others_clean, setting, *tag)
    return out


def run_audit(*, on_run: Callable[[int, int], None] | None = None, **options) -> dict:
    """Run the audit; `options` are `prepare`'s keywords. `on_run(done, total)` is called after
    each training run (the first is the clean round of all n teachers). Returns a JSON-able dict."""
    return execute(prepare(**options), on_run)


def execute(setting: Setting, on_run: Callable[[int, int], None] | None = None) -> dict:
    """The audit for a prepared setting (see the module docstring for what it does)."""
    from fedkd.task import derive_seed, generator

    started = time.perf_counter()
    config, splits, params = setting.config, setting.splits, setting.params
    n, m, k = config.num_clients, len(splits.public_y), splits.num_classes
    total_runs = setting.runs + 1
    report = on_run or (lambda done, total: None)

    x0, y0 = splits.client(TARGET)
    target_clean = clean_release(setting, TARGET)
    others = [clean_release(setting, pid) for pid in range(n) if pid != TARGET]
    others_sum = np.sum(others, axis=0)  # (d,)
    others_clean = np.sum([_clipped(v, params.clip, k) for v in others], axis=0)  # (d,)
    report(1, total_runs)

    # Attack 1 on the clean release
    true_hist = np.bincount(y0, minlength=k) / len(y0)
    prior = np.bincount(splits.public_y, minlength=k) / m
    baseline = kl_divergence(true_hist, prior)
    label = {}
    for view, seen in _views(target_clean, others_sum, others, others_clean, setting, "labels").items():
        rows = seen.reshape(m, k) / (n if view == "secagg" else 1)  # secagg: only the ensemble mean
        estimate = label_estimate(rows)
        label[view] = {"kl": kl_divergence(true_hist, estimate), "baseline_kl": baseline,
                       "estimate": [round(float(v), 6) for v in estimate]}

    # Attack 2: canary runs
    member, scores = [], {view: [] for view in setting.views}
    for run in range(setting.runs):
        rng = np.random.default_rng(derive_seed(config.seed, "audit", "canaries", run))
        c = rng.choice(m, size=setting.canaries_per_run, replace=False)  # public indices
        y_c = (splits.public_y[c] + rng.integers(1, k, size=len(c))) % k  # uniform over the K-1 wrong labels
        is_in = rng.random(len(c)) < 0.5
        x = np.concatenate([x0, splits.public_x[c[is_in]]])
        y = np.concatenate([y0, y_c[is_in]]).astype(y0.dtype)
        released = _release(setting, TARGET, x, y, derive_seed(config.seed, "init", TARGET),  # same init every run
                            generator(config.seed, "audit", "train", run))  # a fresh shuffle per run
        coords = c * k + y_c  # flat index of (c, y_c)
        for view, seen in _views(released, others_sum, others, others_clean, setting, "run", run).items():
            scores[view].append(seen[coords])
        member.append(is_in)
        report(run + 2, total_runs)

    member_all = np.concatenate(member)
    views = {}
    for view in setting.views:
        s = np.concatenate(scores[view])
        if view in LOGIT_VIEWS:
            p = np.clip(s, 1e-12, 1 - 1e-12)
            s = np.log(p) - np.log1p(-p)
        attack = membership_attack(s, member_all, config.seed, setting.delta)
        attack["score"] = "logit" if view in LOGIT_VIEWS else "raw"
        views[view] = {
            "sees": SEES[view],
            "accountant_epsilon": setting.accountant_epsilon if view == "secagg-dp" else None,  # None: no noise
            "label_inference": label[view],
            "membership": attack,
        }
    return {
        "setting": {
            "dataset": config.dataset, "clients": n, "target": TARGET, "target_examples": int(len(y0)),
            "queries": m, "classes": k, "dim": m * k, "temperature": config.temperature,
            "local_epochs": config.local_epochs, "seed": config.seed, "delta": setting.delta,
            "canaries_requested": setting.canaries, "canaries_per_run": setting.canaries_per_run,
            "runs": setting.runs, "trials": int(len(member_all)), "in": int(member_all.sum()),
        },
        "dp": {**params.describe(), "accountant_epsilon": setting.accountant_epsilon, "delta": setting.delta,
               "honest": n},
        "labels": {"true": [round(float(v), 6) for v in true_hist], "public_prior": [round(float(v), 6) for v in prior]},
        "views": views,
        "seconds": time.perf_counter() - started,
    }


# ---- output -----------------------------------------------------------------------------------

def plot_roc(result: dict, path: Path) -> None:
    """ROC of every view on log-log axes (the low-FPR corner is what matters), written to `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    floor = 1e-4  # log axes cannot show 0
    for view, entry in result["views"].items():
        roc = entry["membership"]["roc"]
        dashed = view == "secagg-known-others"  # it lies on top of plain: keep both visible
        ax.step(np.maximum(roc["fpr"], floor), np.maximum(roc["tpr"], floor), where="post",
                linestyle="--" if dashed else "-", linewidth=1.2 if dashed else 2.0,
                label=f"{view} (AUC {entry['membership']['auc']:.3f})")
    ax.plot([floor, 1], [floor, 1], color="grey", linestyle=":", label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1.05), xlabel="false positive rate",
           ylabel="true positive rate", title="canary membership inference (test half)")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(result: dict):
    """The result as a rich table, one row per view (fits 80 columns)."""
    from rich import box
    from rich.table import Table

    s, dp = result["setting"], result["dp"]
    out = Table(title=f"fedkd audit: client {s['target']} ({s['target_examples']} examples) of {s['clients']}, "
                      f"{s['queries']} queries x {s['classes']} classes, T={s['temperature']}",
                box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left")
    for col in ("view", "label\nKL", "prior\nKL", "AUC", "TPR at\n1% FPR", "TPR at\n.1% FPR", "eps\n>=", "eps\nacct"):
        out.add_column(col, justify="left" if col == "view" else "right", no_wrap=True)
    for view, e in result["views"].items():
        mem, lab = e["membership"], e["label_inference"]
        acc = "inf" if e["accountant_epsilon"] is None else f"{e['accountant_epsilon']:.2f}"
        out.add_row(view, f"{lab['kl']:.3f}", f"{lab['baseline_kl']:.3f}", f"{mem['auc']:.3f}",
                    f"{mem['tpr_at_fpr']['0.01']:.3f}", f"{mem['tpr_at_fpr']['0.001']:.3f}", f"{mem['eps_lb']:.2f}", acc)
    out.caption = (f"{s['trials']} canary trials ({s['runs']} runs x {s['canaries_per_run']}, {s['in']} IN); test fitted "
                   f"on one half, measured on the other. TPR at FPR 1% / 0.1%; eps >=: empirical lower bound, "
                   f"{CONFIDENCE:.0%} confidence, delta={s['delta']:g}; eps acct: the accountant's for one release "
                   f"({dp['mechanism']}, z={dp['noise_multiplier']}, clip={dp['clip']}). {result['seconds']:.1f} s")
    return out


# ---- command ----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--view", default="all", help=f"{' | '.join(VIEWS)} | all (default: all)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--out", default="runs/audit", help="folder for audit.json and audit_roc.png (default: runs/audit)")
    parser.add_argument("--clients", type=int, default=10, help="clients n, the target included (default: 10)")
    parser.add_argument("--canaries", type=int, default=1000, help=f"canary trials, >= {MIN_CANARIES} (default: 1000)")
    parser.add_argument("--canaries-per-run", type=int, default=50,
                        help="canaries per training run; 1 gives classical independent trials (default: 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dp-noise-multiplier", type=float, default=1.0, metavar="Z", help="(default: 1.0)")
    parser.add_argument("--dp-clip", type=float, default=2.0, metavar="C",
                        help="L2 clip of a client's centred vector (default: 2.0)")
    parser.add_argument("--delta", type=float, default=1e-5, help="(default: 1e-5)")
    parser.add_argument("--dp-mechanism", default="ddg", help="ddg | skellam (default: ddg)")
    parser.add_argument("--temperature", type=float, default=3.0, help="(default: 3.0)")
    parser.add_argument("--local-epochs", type=int, default=100,
                        help="the teachers' local epochs; the default lets them fit their data, the case an "
                             "auditor must assume (default: 100)")


OPTIONS = ("view", "clients", "canaries", "canaries_per_run", "seed", "dp_noise_multiplier", "dp_clip", "delta",
           "dp_mechanism", "temperature", "local_epochs")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        setting = prepare(**{name: getattr(args, name) for name in OPTIONS})
        out.mkdir(parents=True, exist_ok=True)
    except (UserError, OSError) as exc:
        return report(exc, "fedkd audit")
    try:
        result = _execute_with_progress(setting, show=not args.json)
    except AuditError as exc:  # too few IN or OUT canaries in a half: known only after training
        return report(exc, "fedkd audit")
    text = json.dumps(result, indent=2, allow_nan=False)
    (out / "audit.json").write_text(text + "\n")
    plot_roc(result, out / "audit_roc.png")
    if args.json:
        print(text)
        return 0
    from rich.console import Console

    console = Console()
    console.print(table(result))
    console.print(f"Saved {out}/audit.json, audit_roc.png")
    return 0


def _execute_with_progress(setting: Setting, show: bool) -> dict:
    """`execute`, with a progress bar over the training runs on stderr when `show`."""
    if not show:
        return execute(setting)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[bold]training runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True)
    task = progress.add_task("runs", total=setting.runs + 1)
    with progress:
        return execute(setting, lambda done, total: progress.update(task, completed=done, total=total))
