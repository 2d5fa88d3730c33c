"""Augmented views of public inputs: more queries for the teachers from the same public set.

Owns: the seeded shifts and mirror images that turn a round's public sample into extra inputs
for every teacher to label (`public-views`). The teachers label each view themselves, so a view
need not keep its example's class: it only has to lie near the data, where the ensemble's
answers teach the student something. Every party holds the public set and the run seed, so
clients and server derive the same views without a message, and only the teachers' soft labels
on them travel, through the same secure sum as the rest. numpy only.

FedDF (Lin et al., NeurIPS 2020) distils its server model on augmented unlabelled data for the
same reason: a small distillation set, seen under many small transformations, carries more of
the ensemble's function than the bare set does.
"""

from __future__ import annotations

import numpy as np

MIN_SIDE = 16  # smallest image side (pixels) on which a shift of a few pixels keeps the content


def shiftable(input_shape: tuple[int, ...]) -> bool:
    """Whether inputs of `input_shape` (C, H, W) are images big enough to shift and mirror."""
    return len(input_shape) == 3 and min(input_shape[1:]) >= MIN_SIDE


def max_shift(input_shape: tuple[int, ...]) -> int:
    """The largest shift, in pixels, on each axis: 1/14 of the shorter side (2 pixels at 28 and 32)."""
    return max(1, round(min(input_shape[1:]) / 14))


def views(x: np.ndarray, count: int, *, flip: bool, seed: int) -> np.ndarray:
    """x (m, C, H, W) -> (count * m, C, H, W): view j of example i is row j * m + i.

    Each view shifts its example by a whole number of pixels, drawn uniformly in
    [-s, s] on each axis (s = `max_shift`); pixels shifted in take the channel's background value,
    its minimum over x (0 before standardising, for the built-in data). With `flip`, it is also
    mirrored left-right with probability 1/2. The same (x, count, flip, seed) gives the same views.
    """
    m = len(x)
    if count == 0 or m == 0:
        return np.empty((0, *x.shape[1:]), dtype=x.dtype)
    if x.ndim != 4:
        raise ValueError(f"views need images (m, C, H, W); got inputs of shape {x.shape}")
    rng = np.random.default_rng(seed)
    s = max_shift(x.shape[1:])
    h, w = x.shape[2:]
    source = np.tile(x, (count, 1, 1, 1))  # (count*m, C, H, W)
    if flip:
        mirrored = rng.random(len(source)) < 0.5
        source[mirrored] = source[mirrored][..., ::-1]
    shifts = rng.integers(-s, s + 1, size=(len(source), 2))  # (rows, (dy, dx))
    background = x.min(axis=(0, 2, 3)).reshape(1, -1, 1, 1).astype(x.dtype)  # (1, C, 1, 1)
    out = np.broadcast_to(background, source.shape).copy()
    for dy, dx in np.unique(shifts, axis=0):  # at most (2s+1)^2 groups, each one slice copy
        rows = np.flatnonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))
        out[rows, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            source[rows, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out
