"""Fixed-point encoding of float vectors into the ring Z_{2^b}, and bit packing for the wire.

Owns: clipping, scaling, rounding (nearest or unbiased stochastic), the overflow check
against the real number of clients, decoding the integer sum back to floats, and packing a
ring vector into exactly ceil(len * b / 8) bytes. Must not touch: masks, keys, protocol state.

Encoding of one value x:  code = floor((clip(x, -clip, clip) + clip) * scale + u)
    u = 1/2 (round to nearest) or u ~ U[0, 1) (stochastic: E[code] = (x + clip) * scale).
    0 <= code <= max_code = ceil(2 * clip * scale).
Decoding of a sum of n codes S:  S / scale - n * clip.
Clipped count: each client also sends how many of its entries were clipped (0..dim), as
`count_slots(dim)` extra words holding base-(max_code + 1) digits, least significant first; no
word exceeds max_code, so the one overflow check below covers them too, whatever dim is.
Error bound per coordinate of the decoded sum, against the sum of the *clipped* inputs:
    n / (2 * scale) with nearest rounding, n / scale with stochastic rounding.

Noise hook: `encode(..., add_noise=f)` calls f(codes) on the int64 codes before they are
masked and must return int64 codes of the same shape. It is the place for a later step that
adds integer noise (e.g. distributed discrete Gaussian); such a step must also leave headroom
so that the noisy sum stays within [0, 2^b), which `required_bits` does not know about, and keep
it within [0, n * max_code], which the server's range check (SecAggServer) enforces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedkd.secagg.crypto import RandomBytes, keystream

MIN_BITS, MAX_BITS = 2, 64


def ring_dtype(bit_width: int) -> np.dtype:
    """The machine word the ring Z_{2^b} is computed in: arithmetic wraps mod 2^32 or 2^64,
    and 2^b divides both, so reducing mod 2^b at the end gives the right answer."""
    return np.dtype(np.uint32) if bit_width <= 32 else np.dtype(np.uint64)


def ring_mask(bit_width: int) -> int:
    return (1 << bit_width) - 1


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point codec for one session: values clipped to [-clip, clip], `scale` steps per unit."""

    clip: float
    scale: float
    bit_width: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite number > 0, got {self.clip!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale!r}")
        if not (isinstance(self.bit_width, int) and MIN_BITS <= self.bit_width <= MAX_BITS):
            raise ValueError(f"bit_width must be an int in {MIN_BITS}..{MAX_BITS}, got {self.bit_width!r}")
        if 2 * self.clip * self.scale < 1:
            raise ValueError(f"2 * clip * scale must be >= 1 so values are not all rounded to one code, "
                             f"got clip={self.clip}, scale={self.scale}")

    @property
    def max_code(self) -> int:
        return math.ceil(2 * self.clip * self.scale)

    def required_bits(self, num_clients: int) -> int:
        """Smallest b for which the sum of `num_clients` vectors of codes up to max_code cannot wrap."""
        return (num_clients * self.max_code).bit_length()

    def check_capacity(self, num_clients: int) -> None:
        need = self.required_bits(num_clients)
        if need > self.bit_width:
            hint = (f"use bit_width >= {need}" if need <= MAX_BITS
                    else f"no bit_width up to {MAX_BITS} is enough")
            raise ValueError(
                f"bit_width {self.bit_width} cannot hold the sum of {num_clients} clients "
                f"(codes up to {self.max_code} from clip={self.clip}, scale={self.scale}): "
                f"{hint}, or lower scale or clip"
            )

    def encode(
        self,
        vector: np.ndarray,
        random_bytes: RandomBytes | None = None,
        add_noise: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, int]:
        """((d,) codes in the ring dtype, number of clipped entries).

        `random_bytes` given -> stochastic rounding driven by a 32-byte seed drawn from it;
        None -> round to nearest. Refuses non-finite input with ValueError.
        """
        x = np.asarray(vector)
        if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"expected a 1-D float vector, got shape {x.shape} and dtype {x.dtype}")
        if not np.isfinite(x).all():
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise ValueError(f"vector has {bad} NaN or infinite entries; refusing to encode it")
        y = x.astype(np.float64)  # (d,) a copy; float64 keeps scale * clip exact enough
        clipped = int(np.count_nonzero(np.abs(y) > self.clip))
        np.clip(y, -self.clip, self.clip, out=y)
        y += self.clip
        y *= self.scale
        if random_bytes is None:
            y += 0.5
        else:
            words = np.frombuffer(keystream(random_bytes(32), 8 * y.size), dtype="<u8")
            y += (words >> np.uint64(11)) * 2.0**-53  # uniform in [0, 1) with 53-bit resolution
        np.floor(y, out=y)
        codes = np.minimum(y.astype(np.int64), self.max_code)
        if add_noise is not None:
            codes = np.asarray(add_noise(codes), dtype=np.int64)
            if codes.shape != x.shape:
                raise ValueError(f"add_noise returned shape {codes.shape}, expected {x.shape}")
        # int64 -> ring words: two's complement wrap is exactly reduction mod 2^64 (and 2^32).
        return codes.astype(ring_dtype(self.bit_width)), clipped

    def count_slots(self, dim: int) -> int:
        """Number of words carrying a clipped count in 0..dim."""
        base, slots = self.max_code + 1, 1
        while base**slots <= dim:
            slots += 1
        return slots

    def encode_count(self, count: int, dim: int) -> np.ndarray:
        """(count_slots(dim),) base-(max_code + 1) digits of `count`, least significant first."""
        base, digits = self.max_code + 1, []
        for _ in range(self.count_slots(dim)):
            count, digit = divmod(count, base)
            digits.append(digit)
        return np.array(digits, dtype=ring_dtype(self.bit_width))

    def decode_count(self, digit_sums: np.ndarray) -> int:
        """The sum of the counts, from the word-wise sums of their digits."""
        base = self.max_code + 1
        return sum(int(s) * base**i for i, s in enumerate(digit_sums))

    def decode(self, total: np.ndarray, count: int) -> np.ndarray:
        """(d,) float64 sum of `count` clients' vectors from the (d,) ring sum of their codes."""
        return np.asarray(total, dtype=np.float64) / self.scale - count * self.clip


# --- packing ------------------------------------------------------------------------------


def packed_size(length: int, bit_width: int) -> int:
    return (length * bit_width + 7) // 8


def pack(values: np.ndarray, bit_width: int) -> bytes:
    """Little-endian b-bit packing of ring values already reduced mod 2^b."""
    if bit_width in (8, 16, 32, 64):
        return values.astype(f"<u{bit_width // 8}").tobytes()
    raw = values.astype("<u8").view(np.uint8).reshape(-1, 8)  # (d, 8)
    bits = np.unpackbits(raw, axis=1, bitorder="little")[:, :bit_width]  # (d, b)
    return np.packbits(bits, bitorder="little").tobytes()


def unpack(data: bytes, length: int, bit_width: int) -> np.ndarray:
    """Inverse of `pack`: (length,) array in the ring dtype."""
    if len(data) != packed_size(length, bit_width):
        raise ValueError(f"expected {packed_size(length, bit_width)} packed bytes for {length} "
                         f"values of {bit_width} bits, got {len(data)}")
    dtype = ring_dtype(bit_width)
    if bit_width in (8, 16, 32, 64):
        return np.frombuffer(data, dtype=f"<u{bit_width // 8}").astype(dtype)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=length * bit_width, bitorder="little")
    wide = np.zeros((length, 64), dtype=np.uint8)
    wide[:, :bit_width] = bits.reshape(length, bit_width)
    return np.packbits(wide, axis=1, bitorder="little").view("<u8").reshape(length).astype(dtype)
