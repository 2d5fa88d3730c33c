"""The input kinds the benchmarks run on, made from one uint8 28x28 greyscale .npz (x, y):
the file itself, the same images in Keras layout, and 32x32x3 channels-last colour images."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_inputs(fashion: Path, folder: Path) -> dict[str, str]:
    """label -> dataset setting, writing the derived files into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(fashion) as f:
        x, y = f["x"], f["y"]
    if x.dtype != np.uint8 or x.ndim != 3:
        raise SystemExit(f"{fashion}: expected uint8 x of shape (N, H, W); found {x.dtype} {x.shape}")
    cut = int(len(x) * 0.8)
    keras = folder / "keras_layout.npz"
    np.savez(keras, x_train=x[:cut], y_train=y[:cut], x_test=x[cut:], y_test=y[cut:])
    rng = np.random.default_rng(0)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2))).astype(np.float32)[..., None] / 255  # (N, 32, 32, 1)
    ink = rng.uniform(0.4, 1.0, size=(len(x), 1, 1, 3))  # per-image colour of the garment
    paper = rng.uniform(0.0, 0.4, size=(len(x), 1, 1, 3))  # and of the background
    colour = folder / "colour_channels_last.npz"
    np.savez(colour, x=np.round(255 * (padded * ink + (1 - padded) * paper)).astype(np.uint8), y=y)
    return {"digits": "digits", "fashion3615 (uint8 28x28)": str(fashion),
            "fashion3615 Keras layout": str(keras), "colour 32x32x3 channels-last": str(colour)}
