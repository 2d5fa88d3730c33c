"""Shamir sharing over GF(2^257 - 93)."""

import random

import pytest
from Crypto.Protocol.SecretSharing import Shamir as PyCryptodomeShamir
from Crypto.Util.number import isPrime
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_testkit import seeded_random

from fedkd.secagg import shamir


@st.composite
def sharings(draw):
    n = draw(st.integers(1, 12))
    t = draw(st.integers(1, n))
    xs = draw(st.lists(st.integers(1, 2**64), min_size=n, max_size=n, unique=True))
    secret = draw(st.binary(min_size=1, max_size=shamir.MAX_SECRET_BYTES))
    size = draw(st.integers(t, n))
    subset = sorted(draw(st.permutations(range(n)))[:size])
    return secret, t, xs, subset, draw(st.integers(0, 2**32))


@settings(max_examples=60, derandomize=True, deadline=None)
@given(sharings())
def test_any_threshold_subset_reconstructs_the_secret(case):
    secret, t, xs, subset, seed = case
    ys = shamir.split(secret, t, xs, seeded_random(seed))
    chosen_x = [xs[i] for i in subset]
    chosen_y = [ys[i] for i in subset]
    assert shamir.combine(chosen_y, shamir.lagrange_at_zero(chosen_x), len(secret)) == secret


def test_coefficients_are_reused_across_secrets_of_one_responder_set():
    xs = [3, 7, 11, 20]
    coefficients = shamir.lagrange_at_zero(xs)
    rb = seeded_random(1)
    for i in range(20):
        secret = rb(32)
        ys = shamir.split(secret, 4, xs, rb)
        assert shamir.combine(ys, coefficients, 32) == secret


def test_fewer_than_threshold_shares_fit_every_secret_equally():
    """Perfect secrecy, constructively: for t-1 shares of one secret and ANY other candidate
    secret there is a choice of the random coefficients that yields the very same t-1 shares."""
    t, xs = 4, [1, 2, 3, 4, 5]
    real = shamir.split(b"the real secret", t, xs, seeded_random(2))
    seen_x, seen_y = xs[: t - 1], real[: t - 1]
    for candidate in (b"\x00", b"another secret", bytes(range(32))):
        # The degree t-1 polynomial through (0, candidate) and the seen shares, in coefficient form.
        points = [(0, int.from_bytes(candidate, "big"))] + list(zip(seen_x, seen_y))
        coefficients = _interpolate_coefficients(points)
        assert coefficients[0] == int.from_bytes(candidate, "big")
        feed = iter(c.to_bytes(shamir.SHARE_BYTES, "big") for c in coefficients[1:])
        forged = shamir.split(candidate, t, xs, lambda n: next(feed))
        assert forged[: t - 1] == seen_y


def _interpolate_coefficients(points):
    """Coefficients (lowest first) of the polynomial through `points`, by Lagrange basis expansion."""
    p = shamir.PRIME
    result = [0] * len(points)
    for i, (xi, yi) in enumerate(points):
        basis, denominator = [1], 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                basis = [(a - xj * b) % p for a, b in zip([0] + basis, basis + [0])]
                denominator = denominator * (xi - xj) % p
        scale = yi * pow(denominator, -1, p) % p
        result = [(r + scale * b) % p for r, b in zip(result, basis)]
    return result


def test_the_field_is_prime_and_holds_every_32_byte_secret():
    assert isPrime(shamir.PRIME, false_positive_prob=1e-30)
    assert 2**256 < shamir.PRIME < 2**257
    top = b"\xff" * 32
    ys = shamir.split(top, 2, [1, 2], seeded_random(9))
    assert shamir.combine(ys, shamir.lagrange_at_zero([1, 2]), 32) == top


def test_too_few_shares_do_not_give_the_secret():
    xs = list(range(1, 8))
    rb = seeded_random(3)
    for _ in range(10):
        secret = rb(32)
        ys = shamir.split(secret, 5, xs, rb)
        try:
            guess = shamir.combine(ys[:4], shamir.lagrange_at_zero(xs[:4]), 32)
        except ValueError:
            continue  # the interpolated value does not even fit in 32 bytes
        assert guess != secret


def test_agrees_with_pycryptodome_on_16_byte_secrets():
    """Both schemes (ours over GF(2^257-93), theirs over GF(2^128)) recover the same secrets
    from the same share indices and thresholds."""
    rng = random.Random(4)
    rb = seeded_random(4)
    for _ in range(25):
        n = rng.randint(2, 8)
        t = rng.randint(2, n)
        secret = rb(16)
        theirs = PyCryptodomeShamir.split(t, n, secret)
        ours = shamir.split(secret, t, [i for i, _ in theirs], rb)
        subset = sorted(rng.sample(range(n), rng.randint(t, n)))
        assert PyCryptodomeShamir.combine([theirs[i] for i in subset]) == secret
        coeffs = shamir.lagrange_at_zero([theirs[i][0] for i in subset])
        assert shamir.combine([ours[i] for i in subset], coeffs, 16) == secret


@pytest.mark.parametrize("secret, t, xs, message", [
    (b"", 1, [1], "secret must be"),
    (b"x" * 33, 1, [1], "secret must be"),
    (b"x", 3, [1, 2], "threshold must be in 1..2"),
    (b"x", 1, [1, 1], "distinct"),
    (b"x", 1, [0], "distinct and in 1..PRIME-1"),
])
def test_bad_arguments_are_named(secret, t, xs, message):
    with pytest.raises(ValueError, match=message):
        shamir.split(secret, t, xs, seeded_random(0))


def test_share_encoding_round_trips_and_rejects_non_field_values():
    assert shamir.decode_share(shamir.encode_share(shamir.PRIME - 1)) == shamir.PRIME - 1
    with pytest.raises(ValueError):
        shamir.decode_share(shamir.PRIME.to_bytes(shamir.SHARE_BYTES, "big"))
    with pytest.raises(ValueError):
        shamir.decode_share(b"\x01" * 10)
