"""Shamir secret sharing over the prime field GF(2^257 - 93).

Owns: splitting a secret of up to 32 bytes into shares, Lagrange coefficients at zero, and
reconstruction. A whole 32-byte key fits in one field element (the smallest prime above 2^256
of this form keeps each share at 33 bytes), so one polynomial per secret.
Must not touch: networking of shares, encryption, which client holds which x coordinate.

Randomness: each of the t-1 random coefficients is read as 33 bytes from `random_bytes`,
taken big-endian and masked to 257 bits; values >= PRIME (probability 93 / 2^257) are redrawn.
(Documented so tests can feed chosen coefficients.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

PRIME = 2**257 - 93  # prime (checked in the tests); the largest 32-byte value is below it
SHARE_BYTES = 33  # ceil(257 / 8): a share value, big-endian
MAX_SECRET_BYTES = 32

RandomBytes = Callable[[int], bytes]


def _random_element(random_bytes: RandomBytes) -> int:
    while True:
        value = int.from_bytes(random_bytes(SHARE_BYTES), "big") & (2**257 - 1)
        if value < PRIME:
            return value


def split(secret: bytes, threshold: int, xs: Sequence[int], random_bytes: RandomBytes) -> list[int]:
    """Share values f(x) for each x in `xs`, where f has degree threshold-1 and f(0) = secret.

    Any `threshold` of them reconstruct the secret; fewer say nothing about it.
    """
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise ValueError(f"secret must be 1..{MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in 1..{len(xs)} (the number of shares), got {threshold}")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError(f"share x coordinates must be distinct and in 1..PRIME-1, got {list(xs)}")
    # coefficients[0] is the secret; Horner's rule below evaluates from the top one down.
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [_random_element(random_bytes) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        shares.append(y)
    return shares


def lagrange_at_zero(xs: Sequence[int]) -> tuple[int, ...]:
    """Coefficients l_i with f(0) = sum_i l_i f(x_i) for any f of degree < len(xs).

    Depends only on the x coordinates, so compute once per set of responders and reuse it
    for every secret reconstructed from that set.
    """
    if len(set(xs)) != len(xs):
        raise ValueError(f"x coordinates must be distinct, got {list(xs)}")
    numerators, denominators = [], []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        numerators.append(numerator)
        denominators.append(denominator)
    return tuple(n * inverse % PRIME for n, inverse in zip(numerators, _batch_inverse(denominators)))


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses of all `values` mod PRIME with one modular inversion (Montgomery's trick)."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % PRIME)
    running = pow(prefix[-1], -1, PRIME)  # 1 / (v_0 * ... * v_{m-1})
    inverses = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        inverses[i] = running * prefix[i] % PRIME
        running = running * values[i] % PRIME
    return inverses


def combine(ys: Sequence[int], coefficients: Sequence[int], secret_bytes: int) -> bytes:
    """The secret from share values `ys` and the matching `lagrange_at_zero` coefficients.

    Raises ValueError when the result does not fit in `secret_bytes` (shares inconsistent,
    or fewer than the threshold).
    """
    if len(ys) != len(coefficients):
        raise ValueError(f"{len(ys)} shares but {len(coefficients)} coefficients")
    value = sum(y * c for y, c in zip(ys, coefficients)) % PRIME
    if value.bit_length() > 8 * secret_bytes:
        raise ValueError(f"reconstructed value does not fit in {secret_bytes} bytes: shares are inconsistent")
    return value.to_bytes(secret_bytes, "big")


def encode_share(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise ValueError("share value is not a field element")
    return y
