"""What every reader hands back, and the rules that turn a user's arrays into fedkd's inputs.

Owns: ``RawInput`` (a reader's result, built-in or user-held), ``finish`` (the last step every
user-input reader shares: check values and labels, fix the layout, pick the scaling rule), the
layout rule, the scaling rule (``value_kind``, ``fit_scaling``, ``Scaling``) and the stacking
of decoded images. The readers themselves live one per source kind (npz, hf, folders).

Layout (one example, as stored -> as fedkd uses it):
  (F,)                        features, kept
  (H, W)                      greyscale image -> (1, H, W)
  (H, W, C), C in {1, 3, 4}   channels last (numpy, PIL, Keras) -> (C, H, W), unless axis 1 is
                              also 1, 3 or 4, in which case it is already channels first
  (C, H, W)                   channels first (torch), kept

Scaling, decided once per input from every value it holds (train and test together):
  "0-255"     uint8, or any values all in 0..255 (any dtype; resized or interpolated pixels are
              fractional) with some above 1:                       x / 255, then standardised
  "0-1"       every value in [0, 1]:                              standardised
  "as-given"  anything else (already standardised, or your own units): only cast to float32
Standardised means per channel (a feature vector is one channel), (x - mean) / std, with mean
and std measured on the public set after the / 255: every party holds the public set, so all
derive the same constants and no private example shapes them. A channel with std < 1e-6 keeps
std 1. The built-in datasets (fedkd.data.builtin) use their own fixed constants instead: "fixed".

Must not touch: files, splits, partitions, torch, Flower; everything here is arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from fedkd.errors import DataError

_CHANNEL_COUNTS = (1, 3, 4)  # grey, RGB, RGBA
_MIN_STD = 1e-6


@dataclass(frozen=True, eq=False)
class RawInput:
    """What a reader found: channels-first arrays, not yet scaled, and how they were resolved."""

    name: str
    x: np.ndarray  # (N, *input_shape) channels first, dtype as stored ("fixed": float32, scaled)
    y: np.ndarray  # (N,) int64
    test: tuple[np.ndarray, np.ndarray] | None  # an official test split, same layout
    num_classes: int
    kind: str  # "0-255", "0-1" or "as-given"; "fixed": a built-in dataset, already scaled
    info: dict[str, Any]  # JSON-ready: source, location, raw_shape, raw_dtype, layout, ...


@dataclass(frozen=True)
class Scaling:
    """x -> (x / divide - mean) / std per channel; mean and std are None for "as-given"."""

    kind: str
    divide: float
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    def apply(self, x: np.ndarray) -> np.ndarray:
        out = x.astype(np.float32)  # a copy, so scaling in place below is safe
        if self.divide != 1.0:
            out *= np.float32(1.0 / self.divide)
        if self.mean is not None:
            shape = _channel_shape(x.ndim, len(self.mean))
            out -= np.asarray(self.mean, np.float32).reshape(shape)
            out /= np.asarray(self.std, np.float32).reshape(shape)
        return out

    def describe(self) -> str:
        return {
            "0-255": "divided by 255, then standardised per channel",
            "0-1": "standardised per channel",
            "as-given": "cast to float32, values left as given",
        }[self.kind]


def fit_scaling(kind: str, public_x: np.ndarray) -> Scaling:
    """The Scaling for ``kind``, its per-channel mean and std measured on ``public_x`` (N, ...)."""
    if kind == "as-given":
        return Scaling(kind, 1.0, None, None)
    divide = 255.0 if kind == "0-255" else 1.0
    x = public_x.astype(np.float64) / divide
    # (N, C, H, W): statistics per channel C; anything else is one channel.
    axes = (0, 2, 3) if x.ndim == 4 else tuple(range(x.ndim))
    mean = np.atleast_1d(x.mean(axis=axes))
    std = np.atleast_1d(x.std(axis=axes))
    std = np.where(std < _MIN_STD, 1.0, std)
    return Scaling(kind, divide, tuple(float(v) for v in mean), tuple(float(v) for v in std))


def _channel_shape(ndim: int, channels: int) -> tuple[int, ...]:
    if ndim == 4:
        return (1, channels, 1, 1)
    return (1,) * ndim


def value_kind(*arrays: np.ndarray) -> str:
    """The scaling rule (module docstring) that fits every value in ``arrays``."""
    if all(a.dtype == np.uint8 for a in arrays):
        return "0-255"
    nonempty = [a for a in arrays if a.size]
    if not nonempty:
        return "as-given"
    lo = min(float(a.min()) for a in nonempty)
    hi = max(float(a.max()) for a in nonempty)
    if 0.0 <= lo and hi <= 1.0:
        return "0-1"
    # Non-negative and at most 255: pixels, whole or not (a resize leaves 254.97). Standardising
    # follows, so the / 255 cannot hurt other non-negative data in that range.
    return "0-255" if 0.0 <= lo and hi <= 255.0 else "as-given"


def to_channels_first(x: np.ndarray, where: str) -> tuple[np.ndarray, str]:
    """(N, ...) as stored -> (N, *input_shape) channels first, and a note of what was done."""
    if x.ndim < 2:
        raise DataError(f"{where}: x has shape {x.shape}; expected at least 2-D (N, F), "
                        "(N, H, W), (N, H, W, C) or (N, C, H, W)")
    if x.ndim == 2:
        return x, "features (N, F)"
    if x.ndim == 3:
        return x[:, None], "greyscale (N, H, W) -> (N, 1, H, W)"
    if x.ndim == 4 and x.shape[3] in _CHANNEL_COUNTS and x.shape[1] not in _CHANNEL_COUNTS:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "channels last (N, H, W, C) -> (N, C, H, W)"
    if x.ndim == 4:
        return x, "channels first (N, C, H, W)"
    return x, f"kept as stored ({x.ndim}-D)"


# ---------------------------------------------------------------------------------------------
# The last step of every user-input reader


def finish(name: str, x: np.ndarray, y: np.ndarray, test: tuple[np.ndarray, np.ndarray] | None,
           num_classes: int | None, where: str, info: dict[str, Any]) -> RawInput:
    """Shared last step of every reader: check values, fix the layout, pick the scaling rule."""
    raw_shape, raw_dtype = list(x.shape[1:]), str(x.dtype)
    x = _numeric(x, where)
    y = _label_array(y, len(x), where)
    x, layout = to_channels_first(x, where)
    if test is not None:
        test_x, test_y = _numeric(test[0], where + " (test)"), _label_array(test[1], len(test[0]), where + " (test)")
        test_x, _ = to_channels_first(test_x, where + " (test)")
        if test_x.shape[1:] != x.shape[1:]:
            raise DataError(f"{where}: test examples have shape {test_x.shape[1:]} but training "
                            f"examples {x.shape[1:]}; expected the same shape")
        test = (test_x, test_y)
    found = int(max([y.max(initial=-1)] + ([test[1].max(initial=-1)] if test else []))) + 1
    if num_classes is None:
        num_classes = found
    elif found > num_classes:
        raise DataError(f"{where}: labels reach {found - 1} but the dataset declares "
                        f"{num_classes} classes; expected 0..{num_classes - 1}")
    kind = value_kind(x, *([test[0]] if test else []))
    info = {"raw_shape": raw_shape, "raw_dtype": raw_dtype, "layout": layout, "value_kind": kind,
            **info}
    return RawInput(name, x, y, test, num_classes, kind, info)


def _numeric(x: np.ndarray, where: str) -> np.ndarray:
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{where}: x must be numeric, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{where}: x must be real numbers, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating):
        big = np.finfo(np.float32).max
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(x) | (np.abs(x) > big)
        if bad.any():
            count = int(bad.reshape(len(x), -1).any(axis=1).sum())
            raise DataError(f"{where}: x has non-finite values (NaN or inf, or too big for "
                            f"float32) in {count} examples; expected finite numbers")
    return x


def _label_array(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """(N,) or Keras's (N, 1) integer labels in 0..K-1 -> (N,) int64."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(f"{where}: y must be 1-D integer labels, got shape {y.shape} {y.dtype}")
    if len(y) != n:
        raise DataError(f"{where}: x has {n} examples and y {len(y)} labels; expected the same "
                        "length N, with x at least 2-D (N, F)")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: labels must be 0..K-1, found {y.min()}")
    return y.astype(np.int64)


def stack_images(images: Iterable[Any], names: list[str]) -> np.ndarray:
    """PIL images -> (N, H, W) uint8 if all are greyscale, else (N, H, W, 3) uint8 RGB."""
    images = list(images)
    if not images:
        raise DataError(f"{names[0] if names else 'dataset'}: no images; expected at least one")
    modes = {im.mode for im in images}
    deep = modes & {"I", "I;16", "I;16B", "I;16L", "F"}
    if deep:
        i = next(i for i, im in enumerate(images) if im.mode in deep)
        raise DataError(f"{names[i]}: image mode {images[i].mode} (16-bit or float); expected "
                        "8-bit greyscale or colour images (save them as 8-bit, or use a .npz)")
    mode = "L" if modes <= {"L", "1"} else "RGB"
    size = images[0].size
    arrays = []
    for name, im in zip(names, images):
        if im.size != size:
            raise DataError(f"{name}: image is {im.size[0]}x{im.size[1]} but {names[0]} is "
                            f"{size[0]}x{size[1]}; expected one size for every image")
        arrays.append(np.asarray(im.convert(mode) if im.mode != mode else im, np.uint8))
    return np.stack(arrays)
