"""Privacy accounting for the distributed noise: one Renyi-DP curve per round, composed, and
converted to (epsilon, delta) by Google's `dp-accounting` (the backend of Flower's own
`flwr.serverapp.RdpAccountant`).

Owns: the per-round RDP bound of the distributed discrete Gaussian and of the distributed
Skellam mechanism for the *actual* number of honest contributors, the ledger of rounds with
its budget check, and the calibration of a noise multiplier to a target epsilon.
Must not touch: sampling (`fedkd.privacy.mechanism`), Flower, files.

Neighbouring relation: add or remove one client's whole contribution (client-level DP). The
released object is the noisy sum of one round; the test-set predictions are not released
when DP is on, and the public inputs and round schedule are public.

Discrete Gaussian (Kairouz, Liu & Steinke 2021, Proposition 14): with h honest clients each
adding N_Z(0, s^2), tau = 10 * sum_{k=1}^{h-1} exp(-2 pi^2 s^2 k / (k+1)), and
e2 = Delta_2 / (sqrt(h) s), e1 = Delta_1 / (sqrt(h) s), the sum is (alpha, eps(alpha))-RDP with

    eps(alpha) = min( alpha/2 * e2^2 + tau d,
                      alpha/2 * (e2^2 + 2 e1 tau + tau^2 d),
                      alpha/2 * (e2 + sqrt(d) tau)^2 ).

For s of a few units tau is far below 1e-30 and this is the Gaussian's alpha e2^2 / 2.

Skellam (Agarwal, Kairouz & Liu 2021, Theorem 3.5): the sum of Sk(mu_c, mu_c) over h clients
is Sk(mu, mu), mu = h mu_c, and is (alpha, eps(alpha))-RDP with

    eps(alpha) = alpha Delta_2^2 / (4 mu) + min( ((2 alpha - 1) Delta_2^2 + 6 Delta_1) / (16 mu^2),
                                                 3 Delta_1 / (4 mu) ),

computed here with 2 alpha in place of 2 alpha - 1: a slightly looser bound, never a tighter one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedkd.privacy.mechanism import DPParams, PrivacyError

# RDP orders: fine near 1 (small epsilons), integers up to 256 (large ones). The same grid as
# dp-accounting's default, so the numbers match Flower's RdpAccountant.
ORDERS = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024], dtype=np.float64)


def ddg_rdp(params: DPParams, honest: int) -> np.ndarray:
    """(len(ORDERS),) RDP of one round's noisy sum with `honest` clients' noise in it."""
    if params.noise_multiplier == 0:
        return np.full(ORDERS.shape, np.inf)
    s2 = params.client_variance
    tau = 10 * sum(math.exp(-2 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, honest))
    e2 = params.l2 / math.sqrt(honest * s2)
    e1 = params.l1 / math.sqrt(honest * s2)
    d = params.dim
    a = ORDERS
    return np.minimum.reduce([
        a / 2 * e2**2 + tau * d,
        a / 2 * (e2**2 + 2 * e1 * tau + tau**2 * d),
        a / 2 * (e2 + math.sqrt(d) * tau) ** 2,
    ])


def skellam_rdp(params: DPParams, honest: int) -> np.ndarray:
    if params.noise_multiplier == 0:
        return np.full(ORDERS.shape, np.inf)
    mu = honest * params.client_variance / 2  # each client's Sk(mu_c, mu_c) has variance 2 mu_c
    l2sq, l1, a = params.l2**2, params.l1, ORDERS
    return a * l2sq / (4 * mu) + np.minimum((2 * a * l2sq + 6 * l1) / (16 * mu**2), 3 * l1 / (4 * mu))


def round_rdp(params: DPParams, honest: int) -> np.ndarray:
    if honest < 1:
        raise PrivacyError("a round with no honest contributor has no noise to account for")
    return ddg_rdp(params, honest) if params.mechanism == "ddg" else skellam_rdp(params, honest)


def epsilon_from_rdp(rdp: np.ndarray, delta: float) -> float:
    """The smallest epsilon at `delta` that the RDP curve implies (dp-accounting's conversion,
    Canonne, Kamath & Steinke 2020, Proposition 12)."""
    if not np.isfinite(rdp).any():
        return math.inf
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    eps, _ = compute_epsilon(ORDERS, rdp, delta)
    return float(eps)


@dataclass
class Ledger:
    """The rounds released so far and what they cost; the server keeps one per run."""

    delta: float
    budget: float = 0.0  # epsilon budget; 0: none
    rdp: np.ndarray = field(default_factory=lambda: np.zeros(ORDERS.shape))
    honest: list[int] = field(default_factory=list)  # honest contributors of each released round

    def __post_init__(self) -> None:
        if not 0 < self.delta < 1:
            raise PrivacyError(f"delta must lie in (0, 1), got {self.delta}")

    @property
    def epsilon(self) -> float:
        return 0.0 if not self.honest else epsilon_from_rdp(self.rdp, self.delta)

    def epsilon_after(self, params: DPParams, honest: int) -> float:
        """Epsilon if one more round with `honest` contributors were released (nothing recorded)."""
        return epsilon_from_rdp(self.rdp + round_rdp(params, honest), self.delta)

    def would_exceed(self, params: DPParams) -> bool:
        """Whether the next round can exceed the budget (assuming the fewest honest clients)."""
        return self.budget > 0 and self.epsilon_after(params, params.min_honest) > self.budget

    def record(self, params: DPParams, honest: int) -> float:
        """Compose one released round; returns the epsilon spent so far."""
        self.rdp = self.rdp + round_rdp(params, honest)
        self.honest.append(honest)
        return self.epsilon


def calibrate(params_for: Callable[[float], DPParams], rounds: int, honest: int, target_epsilon: float, delta: float) -> float:
    """The smallest noise multiplier z (to 0.1%) for which `rounds` rounds with `honest`
    contributors each stay within `target_epsilon` at `delta`. `params_for(z)` builds the
    round's DPParams for a multiplier z."""
    if not target_epsilon > 0:
        raise PrivacyError(f"target epsilon must be > 0, got {target_epsilon}")

    def eps(z: float) -> float:
        return epsilon_from_rdp(rounds * round_rdp(params_for(z), honest), delta)

    low, high = 1e-3, 1.0
    while eps(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise PrivacyError(f"no noise multiplier up to 1e4 reaches epsilon {target_epsilon}")
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        low, high = (mid, high) if eps(mid) > target_epsilon else (low, mid)
    return high
