"""`fedkd audit`'s scenario: attack exactly what the server receives, to set the result against
what the privacy accountant promises.

Owns: the audit scenario (one fd release of soft labels on the whole public set, target client
0), the four server views of that release, the two attacks' trials (the label estimate's input,
the canary runs and their scores) and the result dict. Must not touch: Flower, secure-aggregation
messaging, the mechanism and the accountant themselves (it calls `fedkd.privacy.mechanism` and
`.accounting`), how a client trains and releases (it calls `fedkd.task`'s steps, those of the
ClientApp), the statistics (`fedkd.privacy.audit_stats`) or the command's output
(`fedkd.privacy.audit_cli`).

The release. Every client i trains its teacher with `fedkd.task`'s own steps as
`fedkd.task.teacher_round` does in round 1 (same init seed, same shuffle generator) and releases
v_i = softmax(z_i / T) on the m public queries, an (m, K) matrix read as a (d = m*K,) vector.
What the server sees, per view:

    plain                 v_0                          (no secure aggregation)
    secagg                S = sum_i v_i                (it knows nothing about the others)
    secagg-known-others   S - sum_{j != 0} v_j = v_0   (it knows or rebuilt the others' vectors)
    secagg-dp             decode_sum(sum_i encode(v_i)) - sum_{j != 0} (clip(v_j - 1/K) + 1/K)
                          = clip(v_0 - 1/K) + 1/K + every client's rounding error + all the noise

For secagg-dp each client runs `mechanism.encode` with its own secret generator and the server
decodes the sum; the strongest server that colludes with no client then removes the others'
clean clipped vectors, which it cannot do better than exactly. The DP parameters are those
`fedkd run` derives (`fedkd.task.dp_params`) with these DP options, and the accountant's epsilon
for one such release is `Ledger(delta).record(params, honest=n)`: client-level DP (a whole
client's vector added or removed), so it also bounds the example-level attacks below.

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
views are derived from the same runs. The scores go to `audit_stats.membership_attack` (a global
Gaussian likelihood-ratio test, fitted on one half of the trials and measured on the other; its
module docstring states the statistics and their caveats). The attack measures memorisation:
a teacher that does not fit its own data (few examples, few epochs) leaks little in any view, so
the default trains for 100 local epochs (`fedkd run` uses 20): an audit should assume the teacher
fits, and with 20 epochs the plain attack drops to AUC 0.77 (seed 0).

Finished trainings can be kept (`Pieces`, which `fedkd.privacy.audit_cli` keeps on disk): each
client's clean release and each canary run's release, under a key of everything it was trained
from (the run settings; for a canary run also canaries-per-run and its index), so an audit stopped
mid-way, run again with the same options, trains only what is missing. The views, the DP options
and delta do not enter the key: the same trainings serve every view and noise level.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from fedkd.config import Config
from fedkd.errors import ConfigError, DataError, require_clients
from fedkd.privacy.audit_stats import AuditError, kl_divergence, label_estimate, logit, membership_attack

if TYPE_CHECKING:  # torch and the data stack load only when an audit runs, not when the CLI parses
    import torch

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
MIN_CANARIES = 20
RUN = Config()  # `fedkd run`'s defaults: the audit's clients and temperature default to them


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
    clients: int = RUN.num_clients,
    canaries: int = 1000,
    canaries_per_run: int = 50,
    seed: int = 0,
    dp_noise_multiplier: float = 1.0,
    dp_clip: float = 2.0,
    delta: float = 1e-5,
    dp_mechanism: str = "ddg",
    temperature: float = RUN.temperature,
    local_epochs: int = 100,
) -> Setting:
    """Check every option and build the data, DP parameters and accountant's epsilon; raises
    AuditError (one line) on bad input, before anything is trained or written."""
    from fedkd.privacy.accounting import Ledger
    from fedkd.privacy.mechanism import PrivacyError
    from fedkd.task import dp_params, splits_for

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
        # vote-weighting none: what a client releases under distributed DP (auto resolves to it there);
        # clip-norm 0: unclipped local steps memorise at least as much (the worst case the audit wants),
        # and the audit figures in docs/results.md were measured so
        config = RUN.replace(num_clients=clients, seed=seed, temperature=temperature,
                             local_epochs=local_epochs, device="cpu", vote_weighting="none", clip_norm=0.0)
        splits = splits_for(config)
        if canaries_per_run > len(splits.public_y):
            raise AuditError(f"--canaries-per-run {canaries_per_run} exceeds the {len(splits.public_y)} public examples")
        # The run's DP parameters for these options (granularity, ring width, wrap probability as
        # `fedkd run` resolves them). Not Config.replace: DPParams checks the three options itself,
        # with the messages the audit reports; the clients keep training and releasing without DP.
        with_dp = dataclasses.replace(config, dp_clip=dp_clip, dp_noise_multiplier=dp_noise_multiplier,
                                      dp_mechanism=dp_mechanism)
        params = dp_params(with_dp, splits.num_classes, 1)  # d = m*K on the whole public set
        epsilon = Ledger(delta).record(params, honest=clients)
    except (ConfigError, DataError, PrivacyError) as exc:
        raise AuditError(str(exc)) from None
    return Setting(VIEWS if view == "all" else (view,), canaries, canaries_per_run,
                   math.ceil(canaries / canaries_per_run), delta, config, splits, params, epsilon)


def _release(setting: Setting, pid: int, x: np.ndarray, y: np.ndarray, shuffle: torch.Generator) -> np.ndarray:
    """Train client `pid`'s teacher from its seeded init on (x, y), drawing batches from
    `shuffle`, and return its (d,) float64 release on the whole public set: `fedkd.task`'s
    start, train and release steps, as `teacher_round` runs them."""
    import torch

    from fedkd import task

    config, splits, cpu = setting.config, setting.splits, torch.device("cpu")
    with torch.random.fork_rng(devices=[]):  # the seeded init must not disturb the caller's global RNG
        model = task.initial_teacher(config, splits, pid)
    task.train_teacher(model, config, x, y, generator=shuffle, device=cpu,
                       phase="local training")  # what a divergence error has always named here
    labels, _ = task.public_release(model, config, splits, y, splits.public_x, cpu)  # (m, K); no weights (vote none)
    return labels.ravel().astype(np.float64)


def clean_release(setting: Setting, pid: int) -> np.ndarray:
    """(d,) client `pid`'s release without canaries: round 1 of `fedkd run`, with
    `fedkd.task.teacher_round`'s init seed and shuffle generator."""
    from fedkd.task import generator

    x, y = setting.splits.client(pid)
    return _release(setting, pid, x, y, generator(setting.config.seed, "client", pid, 1))


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


class Pieces(Protocol):
    """Finished trainings kept between runs of an audit: a release (d,) under a name, with the key
    of what it was trained from; `get` gives None for a name not kept or kept under another key."""

    def get(self, name: str, key: str) -> np.ndarray | None: ...

    def put(self, name: str, key: str, release: np.ndarray) -> None: ...


def training_key(setting: Setting, *extra: object) -> str:
    """What a training depends on, as a short digest: every run setting (the data, the clients,
    the seed, the teachers' training) and `extra` (a canary run's canaries-per-run and index)."""
    settings = {k: v for k, v in setting.config.to_run_config().items() if k != "out"}
    text = json.dumps([settings, *extra], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def trainings(setting: Setting) -> int:
    """How many trainings the audit runs: each client's clean release, then each canary run."""
    return setting.config.num_clients + setting.runs


def _kept(pieces: Pieces | None, name: str, key: str, train: Callable[[], np.ndarray]) -> np.ndarray:
    """The release kept under `name` and `key`, or `train()`'s, kept as soon as it is done."""
    if pieces is not None:
        release = pieces.get(name, key)
        if release is not None:
            return release
    release = train()
    if pieces is not None:
        pieces.put(name, key, release)
    return release


def run_audit(*, on_run: Callable[[int, int], None] | None = None, **options) -> dict:
    """Run the audit; `options` are `prepare`'s keywords. `on_run(done, total)` is called after
    each training run (the first is the clean round of all n teachers). Returns a JSON-able dict."""
    return execute(prepare(**options), on_run)


def execute(setting: Setting, on_run: Callable[[int, int], None] | None = None, pieces: Pieces | None = None) -> dict:
    """The audit for a prepared setting (see the module docstring for what it does); with
    `pieces`, trainings kept there under the same key are read back, and each new one is kept."""
    from fedkd.task import derive_seed, generator

    started = time.perf_counter()
    config, splits, params = setting.config, setting.splits, setting.params
    n, m, k = config.num_clients, len(splits.public_y), splits.num_classes
    total_runs = setting.runs + 1
    report = on_run or (lambda done, total: None)

    x0, y0 = splits.client(TARGET)
    clean_key = training_key(setting)
    clean = [_kept(pieces, f"clean-{pid}", clean_key, lambda pid=pid: clean_release(setting, pid)) for pid in range(n)]
    target_clean = clean[TARGET]
    others = [v for pid, v in enumerate(clean) if pid != TARGET]
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
        released = _kept(pieces, f"run-{run}", training_key(setting, setting.canaries_per_run, run),  # same init,
                         lambda: _release(setting, TARGET, x, y, generator(config.seed, "audit", "train", run)))  # fresh shuffle
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
            s = logit(s)
        attack = membership_attack(s, member_all, derive_seed(config.seed, "audit", "halves"), setting.delta)
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
            "local_epochs": config.local_epochs, "clip_norm": config.clip_norm, "seed": config.seed, "delta": setting.delta,
            "canaries_requested": setting.canaries, "canaries_per_run": setting.canaries_per_run,
            "runs": setting.runs, "trials": int(len(member_all)), "in": int(member_all.sum()),
        },
        "dp": {**params.describe(), "accountant_epsilon": setting.accountant_epsilon, "delta": setting.delta,
               "honest": n},
        "labels": {"true": [round(float(v), 6) for v in true_hist], "public_prior": [round(float(v), 6) for v in prior]},
        "views": views,
        "seconds": time.perf_counter() - started,
    }
