"""Fixed-point encoding, the overflow check and bit packing."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_testkit import seeded_random

from fedkd.secagg.quantize import FixedPoint, pack, packed_size, ring_mask, unpack


def test_round_to_nearest_is_within_half_a_step():
    codec = FixedPoint(clip=2.0, scale=1000.0, bit_width=32)
    x = np.linspace(-2, 2, 10_001, dtype=np.float32)
    codes, clipped = codec.encode(x)
    assert clipped == 0 and codes.dtype == np.uint32
    assert codes.max() <= codec.max_code
    err = np.abs(codec.decode(codes, 1) - x.astype(np.float64))
    assert err.max() <= 0.5 / 1000 + 1e-9


def test_stochastic_rounding_is_unbiased():
    codec = FixedPoint(clip=1.0, scale=4.0, bit_width=32)  # coarse: a step of 0.25
    x = np.full(200_000, 0.1, dtype=np.float32)
    codes, _ = codec.encode(x, random_bytes=seeded_random(0))
    values = codec.decode(codes, 1)
    assert set(np.unique(values)) == {0.0, 0.25}
    assert abs(values.mean() - 0.1) < 0.003  # round-to-nearest would give 0.0 every time


def test_clipped_entries_are_counted_and_clipped():
    codec = FixedPoint(clip=1.0, scale=8.0, bit_width=16)
    codes, clipped = codec.encode(np.array([-3.0, -1.0, 0.0, 1.0, 5.0]))
    assert clipped == 2
    assert list(codec.decode(codes, 1)) == [-1.0, -1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("bad", [np.array([0.0, np.nan]), np.array([np.inf]), np.array([[0.0]]), np.array([1, 2])])
def test_non_finite_or_non_vector_input_is_refused(bad):
    with pytest.raises(ValueError):
        FixedPoint(1.0, 8.0, 16).encode(bad)


def test_bit_width_is_checked_against_the_real_client_count_and_names_the_smallest_that_works():
    codec = FixedPoint(clip=1.0, scale=2.0**16, bit_width=24)  # codes up to 2^17
    codec.check_capacity(100)  # 100 * 2^17 < 2^24
    with pytest.raises(ValueError, match=r"bit_width 24 cannot hold the sum of 200 clients.*bit_width >= 25"):
        codec.check_capacity(200)
    assert codec.required_bits(200) == 25
    codec.check_capacity(127)  # 127 * 2^17 < 2^24, while 128 * 2^17 = 2^24 would wrap
    assert codec.required_bits(128) == 25


@pytest.mark.parametrize("dim, slots", [(1, 1), (16, 1), (17, 2), (289, 3)])
def test_clipped_counts_travel_as_digits_no_larger_than_a_code(dim, slots):
    codec = FixedPoint(clip=1.0, scale=8.0, bit_width=16)  # max_code 16: base-17 digits
    assert codec.count_slots(dim) == slots
    counts = [0, dim, dim // 2, dim]
    digits = [codec.encode_count(c, dim) for c in counts]
    assert all(d.size == slots and d.max() <= codec.max_code for d in digits)
    assert codec.decode_count(sum(d.astype(np.int64) for d in digits)) == sum(counts)


def test_noise_hook_sees_int64_codes_before_masking():
    codec = FixedPoint(1.0, 4.0, 16)
    codes, _ = codec.encode(np.zeros(3), add_noise=lambda c: c + np.array([1, -1, 0]))
    assert list(codes) == [5, 3, 4]


@pytest.mark.parametrize("kwargs, message", [
    (dict(clip=0.0, scale=1.0, bit_width=8), "clip must be"),
    (dict(clip=1.0, scale=float("nan"), bit_width=8), "scale must be"),
    (dict(clip=1.0, scale=1.0, bit_width=65), "bit_width must be an int in 2..64"),
    (dict(clip=0.1, scale=1.0, bit_width=8), "2 \\* clip \\* scale must be >= 1"),
])
def test_bad_codec_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FixedPoint(**kwargs)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(st.integers(2, 64), st.integers(1, 300), st.integers(0, 2**32))
def test_packing_round_trips_at_exactly_b_bits_per_value(bits, length, seed):
    dtype = np.uint32 if bits <= 32 else np.uint64
    raw = np.frombuffer(seeded_random(seed)(8 * length), "<u8").astype(dtype)
    values = raw & dtype(ring_mask(bits))
    data = pack(values, bits)
    assert len(data) == packed_size(length, bits) == (length * bits + 7) // 8
    assert np.array_equal(unpack(data, length, bits), values)
