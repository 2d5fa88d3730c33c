"""Distributed differential privacy for the soft labels, applied on the client before masking.

Owns: the exact discrete Gaussian sampler (Canonne, Kamath & Steinke 2020), the Skellam option,
the client's encoding (centre, clip, scale, conditionally round, add its noise share), the
server's decoding of the noisy integer sum, and the sizes everything depends on (the rounded
sensitivity, each client's noise share, the per-client range that keeps the ring sum from
wrapping). Pure numpy: no torch, no Flower, no I/O. Randomness comes in as a numpy Generator.

The mechanism, for one client holding P (m, K) softened probabilities on the round's queries
(Kairouz, Liu & Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation", Algorithm 1):

    q = flatten(P - 1/K)                     (d = m*K,) centred: |q| is small for a flat row
    q = q * min(1, c / ||q||_2)              L2 clip to c: one client moves the sum by <= c
    x = q / gamma                            granularity gamma = c / 2^g, so ||x|| <= 2^g
    x~ = stochastic_round(x), repeated until ||x~||_2 <= Delta_2   (conditional rounding)
    y = x~ + Z,  Z ~ N_Z(0, sigma_c^2)^d     this client's share of the noise

The server receives sum_i y_i (secure aggregation, exact in the ring) and decodes
gamma * sum_i y_i + n / K, the sum of the clipped probabilities plus noise of variance
(n_honest * sigma_c^2) * gamma^2 per coordinate.

Rounding inflates the sensitivity: with beta = exp(-1/2), KLS21 (Theorem 2 / Eq. 11) give

    Delta_2^2 = min( (c/gamma + sqrt(d))^2,
                     c^2/gamma^2 + d/4 + sqrt(2 ln(1/beta)) * (c/gamma + sqrt(d)/2) )
    Delta_1   = min( Delta_2^2, sqrt(d) * Delta_2 )         (integer vectors)

and the calibration uses Delta_2, not c/gamma. The total noise is sigma = z * Delta_2 (z the
noise multiplier); each client adds a share of variance sigma^2 / h_min, where
h_min = n - max_dropouts - colluders is the fewest honest clients whose noise can be left in
the sum, so the target noise survives up to that many drop-outs and colluders.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import numpy as np

from fedkd.errors import UserError

BETA = math.exp(-0.5)  # conditional-rounding failure probability per try (the paper's choice)
MECHANISMS = ("ddg", "skellam")
_FAST_LIMIT = 2**62  # int64 arithmetic is exact below this


class PrivacyError(UserError):
    """Settings that cannot give the promised guarantee; the message says which and why."""


# ---- exact samplers (Canonne, Kamath & Steinke 2020, "The Discrete Gaussian for Differential
# Privacy", Algorithms 1-3). Every random choice is a uniform integer below a bound, so with an
# exact uniform source (numpy's `integers` is unbiased) the output law is exact: no floats. ----

def _bernoulli_ratio(rng: np.random.Generator, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Bernoulli(num/den) elementwise, num <= den; exact integer comparison."""
    return rng.integers(0, den, dtype=np.int64) < num


def bernoulli_exp_neg(rng: np.random.Generator, num: np.ndarray, den: int) -> np.ndarray:
    """Bernoulli(exp(-num/den)) elementwise for int64 num >= 0 and one int den >= 1.

    exp(-g) for g in [0, 1]: draw A_k ~ Bernoulli(g/k) for k = 1, 2, ... until the first A_k = 0;
    the answer is 1 iff that k is odd (the alternating series of exp(-g)). For g > 1:
    floor(g) independent Bernoulli(exp(-1)) all equal to 1, and one Bernoulli(exp(-frac(g))).
    """
    num = np.asarray(num, dtype=np.int64)
    whole, frac = np.divmod(num, den)  # g = whole + frac/den
    out = np.ones(num.shape, dtype=bool)
    rounds = int(whole.max(initial=0))
    for i in range(rounds):  # exp(-1) factors; stop early where already 0
        live = out & (whole > i)
        if not live.any():
            break
        out[live] = _exp_neg_unit(rng, np.ones(int(live.sum()), np.int64), 1)
    live = out.copy()
    out[live] = _exp_neg_unit(rng, frac[live], den)
    return out


def _exp_neg_unit(rng: np.random.Generator, num: np.ndarray, den: int) -> np.ndarray:
    """Bernoulli(exp(-num/den)) for num/den in [0, 1]."""
    k = np.ones(num.shape, dtype=np.int64)
    running = np.ones(num.shape, dtype=bool)
    while running.any():
        idx = np.flatnonzero(running)
        a = _bernoulli_ratio(rng, num[idx], den * k[idx])  # A ~ Bernoulli(g / k)
        k[idx[a]] += 1
        running[idx[~a]] = False
    return (k % 2) == 1


def discrete_laplace(rng: np.random.Generator, t: int, size: int) -> np.ndarray:
    """(size,) int64 from P(y) proportional to exp(-|y| / t), integer t >= 1 (CKS20 Algorithm 2)."""
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        n = todo.size
        u = rng.integers(0, t, n, dtype=np.int64)
        keep = bernoulli_exp_neg(rng, u, t)  # accept U with probability exp(-U/t)
        v = np.zeros(n, dtype=np.int64)  # V ~ Geometric: count successes of Bernoulli(exp(-1))
        going = keep.copy()
        while going.any():
            idx = np.flatnonzero(going)
            a = bernoulli_exp_neg(rng, np.ones(idx.size, np.int64), 1)
            v[idx[a]] += 1
            going[idx[~a]] = False
        x = u + t * v
        negative = rng.integers(0, 2, n).astype(bool)
        keep &= ~(negative & (x == 0))  # +0 and -0 would count zero twice
        y = np.where(negative, -x, x)
        out[todo[keep]] = y[keep]
        todo = todo[~keep]
    return out


@dataclass(frozen=True)
class Variance:
    """sigma^2 = num / den, an exact rational, rounded up from the float it was made from (more
    noise, never less)."""

    num: int
    den: int

    @classmethod
    def at_least(cls, value: float) -> "Variance":
        if not (math.isfinite(value) and value > 0):
            raise PrivacyError(f"noise variance must be a finite number > 0, got {value}")
        den = 1 << max(0, 24 - math.ceil(value).bit_length())  # ~24 significant bits
        return cls(math.ceil(value * den), den)

    @property
    def value(self) -> float:
        return self.num / self.den


def discrete_gaussian(rng: np.random.Generator, variance: Variance, size: int) -> np.ndarray:
    """(size,) int64 from N_Z(0, sigma^2): P(y) proportional to exp(-y^2 / (2 sigma^2)), exactly
    (CKS20 Algorithm 3): propose Y ~ DLap(t), t = floor(sigma) + 1, and accept it with
    probability exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)).

    With sigma^2 = a/b that exponent is (|Y| t b - a)^2 / (2 a b t^2), an integer ratio; it is
    computed in int64 where that is exact and in Python integers otherwise (rare large |Y|, or
    very large sigma), so the law is exact either way.
    """
    a, b = variance.num, variance.den
    t = math.isqrt(a // b) + 1  # floor(sigma) + 1
    den = 2 * a * b * t * t
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    # |Y| below y_fast keeps (|Y| t b - a)^2 and den * k (k <= 64) inside int64
    y_fast = max(0, (math.isqrt(_FAST_LIMIT) - a) // (t * b)) if den * 64 < _FAST_LIMIT else -1
    slow = random.Random(int(rng.integers(0, 2**63)))
    while todo.size:
        y = discrete_laplace(rng, t, todo.size)
        mag = np.abs(y)
        fast = mag <= y_fast
        accept = np.zeros(todo.size, dtype=bool)
        if fast.any():
            num = (mag[fast] * (t * b) - a) ** 2
            accept[fast] = bernoulli_exp_neg(rng, num, den)
        for i in np.flatnonzero(~fast):
            accept[i] = _slow_exp_neg(slow, (int(mag[i]) * t * b - a) ** 2, den)
        out[todo[accept]] = y[accept]
        todo = todo[~accept]
    return out


def _slow_exp_neg(r: random.Random, num: int, den: int) -> bool:
    """Bernoulli(exp(-num/den)) in Python integers (same algorithm as `bernoulli_exp_neg`)."""
    whole, frac = divmod(num, den)
    for _ in range(whole):
        if not _slow_exp_neg_unit(r, 1, 1):
            return False
    return _slow_exp_neg_unit(r, frac, den)


def _slow_exp_neg_unit(r: random.Random, num: int, den: int) -> bool:
    k = 1
    while r.randrange(den * k) < num:
        k += 1
    return k % 2 == 1


def skellam(rng: np.random.Generator, mu: float, size: int) -> np.ndarray:
    """(size,) int64 from Skellam(mu, mu) = Poisson(mu) - Poisson(mu): variance 2 mu. Uses numpy's
    Poisson sampler (floating point inside, unlike the discrete Gaussian above)."""
    return rng.poisson(mu, size).astype(np.int64) - rng.poisson(mu, size).astype(np.int64)


# ---- sizes ------------------------------------------------------------------------------------

def rounded_l2(scaled_clip: float, dim: int, beta: float = BETA) -> float:
    """Delta_2: the largest L2 norm a conditionally rounded vector may have (KLS21), for a vector
    of norm <= scaled_clip = c / gamma in `dim` coordinates."""
    always = scaled_clip + math.sqrt(dim)  # holds for any rounding, no conditioning needed
    if beta <= 0:
        return always
    conditioned = scaled_clip**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (scaled_clip + math.sqrt(dim) / 2)
    return min(always, math.sqrt(conditioned))


@dataclass(frozen=True)
class DPParams:
    """Everything client and server must agree on for one round's private release.

    Units: `clip` is in probability units; every other size is in integer (rounded) units.
    """

    mechanism: str  # "ddg" or "skellam"
    clip: float  # c: L2 bound of a client's centred vector
    noise_multiplier: float  # z: total noise std = z * l2
    granularity_bits: int  # g: c / gamma = 2^g
    dim: int  # d = m * K released coordinates
    num_classes: int  # K
    num_clients: int  # n, who are asked to contribute
    min_honest: int  # h_min = n - max_dropouts - colluders
    bit_width: int  # ring Z_{2^b} of the secure sum
    wrap_probability: float  # target chance that any client's value leaves the ring range

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise PrivacyError(f"dp mechanism '{self.mechanism}' is unknown; choose one of {', '.join(MECHANISMS)}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise PrivacyError(f"dp clip must be > 0, got {self.clip}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise PrivacyError(f"dp noise multiplier must be >= 0, got {self.noise_multiplier}")
        if not 0 <= self.granularity_bits <= 20:
            raise PrivacyError(f"dp granularity bits must lie in 0..20, got {self.granularity_bits}")
        if not 1 <= self.min_honest <= self.num_clients:
            raise PrivacyError(
                f"{self.num_clients} clients with the tolerated drop-outs and colluders leave {self.min_honest} "
                "honest contributors; at least 1 is needed (lower dp-max-dropouts or dp-colluders)")
        if not 0 < self.wrap_probability < 1:
            raise PrivacyError(f"wrap probability must lie in (0, 1), got {self.wrap_probability}")
        if self.noise_multiplier > 0 and self.client_variance < 0.25:
            raise PrivacyError(
                f"each client's noise share has variance {self.client_variance:.3g} < 1/4 in integer units, below "
                "the range the distributed discrete Gaussian bound covers; raise dp-granularity-bits")
        need = (self.num_clients * 2 * self.value_range).bit_length()
        if need > self.bit_width:
            raise PrivacyError(
                f"secagg-bit-width {self.bit_width} cannot hold the noisy sum of {self.num_clients} clients "
                f"(each value within +-{self.value_range} at wrap probability {self.wrap_probability:g}): use "
                f"secagg-bit-width >= {need}, or lower dp-granularity-bits")

    @property
    def gamma(self) -> float:
        """Granularity: one integer step in probability units."""
        return self.clip / 2**self.granularity_bits

    @property
    def l2(self) -> float:
        """Delta_2 in integer units (rounding included)."""
        return rounded_l2(2.0**self.granularity_bits, self.dim)

    @property
    def l1(self) -> float:
        return min(self.l2**2, math.sqrt(self.dim) * self.l2)

    @property
    def total_std(self) -> float:
        """sigma = z * Delta_2: the noise std per coordinate in the sum, in integer units."""
        return self.noise_multiplier * self.l2

    @property
    def client_variance(self) -> float:
        """Each client's share: sigma^2 / h_min (Skellam: 2 mu_c = this)."""
        return self.total_std**2 / self.min_honest

    def honest_std(self, honest: int) -> float:
        """Noise std per coordinate of the sum when `honest` clients' shares are in it."""
        return math.sqrt(honest * self.client_variance)

    @property
    def value_range(self) -> int:
        """R: every value a client sends lies in [-R, R] except with probability `wrap_probability`
        over all n*d values (sub-Gaussian tail of the share, union bound); values outside are
        clipped to it by the fixed-point encoder and counted, so the ring sum never wraps."""
        k = math.sqrt(2 * math.log(2 * self.dim * self.num_clients / self.wrap_probability))
        tail = k * math.sqrt(self.client_variance)
        if self.mechanism == "skellam":  # Poisson tails are heavier for small mu: Bernstein margin
            tail += k * k / 3
        return math.ceil(self.l2 + tail) + 1

    def describe(self) -> dict:
        return {
            "mechanism": self.mechanism, "clip": self.clip, "noise_multiplier": self.noise_multiplier,
            "granularity": self.gamma, "dim": self.dim, "l2_sensitivity": self.l2,
            "l2_sensitivity_unrounded": 2.0**self.granularity_bits, "total_std": self.total_std,
            "client_std": math.sqrt(self.client_variance), "min_honest": self.min_honest,
            "value_range": self.value_range,
        }


# ---- client and server ------------------------------------------------------------------------

@dataclass(frozen=True)
class Encoded:
    values: np.ndarray  # (d,) float64 holding integers: rounded vector + noise share
    norm: float  # ||P - 1/K|| before clipping (probability units)
    clipped: bool
    rounding_tries: int
    noise_seconds: float


def encode(probs: np.ndarray, params: DPParams, rng: np.random.Generator) -> Encoded:
    """The client's side: (m, K) or (d,) probabilities -> integer values to hand to secure
    aggregation (as float64, exact below 2^53). `rng` must be secret from the server."""
    q = np.asarray(probs, dtype=np.float64).ravel() - 1.0 / params.num_classes  # (d,) centred
    if q.size != params.dim:
        raise ValueError(f"expected {params.dim} values, got {q.size}")
    norm = float(np.linalg.norm(q))
    clipped = norm > params.clip
    if clipped:
        q *= params.clip / norm
    x = q / params.gamma  # ||x|| <= 2^g
    bound_sq = params.l2**2
    floor = np.floor(x)
    frac = x - floor
    for tries in range(1, 1001):  # each try fails with probability <= beta
        rounded = floor + (rng.random(x.size) < frac)
        if float(rounded @ rounded) <= bound_sq:
            break
    else:
        raise PrivacyError("conditional rounding did not meet its norm bound in 1000 tries")
    t0 = time.perf_counter()
    if params.noise_multiplier > 0:
        if params.mechanism == "ddg":
            noise = discrete_gaussian(rng, Variance.at_least(params.client_variance), x.size)
        else:
            noise = skellam(rng, params.client_variance / 2, x.size)
        rounded = rounded + noise
    return Encoded(rounded, norm, clipped, tries, time.perf_counter() - t0)


def decode_sum(total: np.ndarray, count: int, params: DPParams) -> np.ndarray:
    """The server's side: the (d,) sum of `count` clients' encoded values -> (d,) float64 noisy sum
    of their clipped probability vectors (undo the granularity, add back count / K)."""
    return np.asarray(total, dtype=np.float64) * params.gamma + count / params.num_classes
