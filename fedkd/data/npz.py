"""Reading a user's ``.npz`` file: fedkd's ``x``/``y`` layout, or Keras's four arrays.

Owns: which arrays an ``.npz`` must hold, and refusing anything that is not numpy's zip archive
(``allow_pickle=False``: a file cannot run code while we read it). Must not touch: the layout and
scaling rules (fedkd.data.layout), splits, torch, Flower.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fedkd.data.layout import RawInput, finish
from fedkd.errors import DataError

_KERAS_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_npz(path: Path) -> RawInput:
    """x (N, ...) and y (N,), or Keras's x_train, y_train, x_test, y_test (an official test split)."""
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and say so, confusingly
        with open(path, "rb") as f:
            head = f.read(8)
        raise DataError(f"{path} is not a readable .npz: it starts with bytes {head!r}, expected "
                        "the zip archive numpy.savez writes")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:  # a zip error, a pickle refusal, a bad header: all "not an npz"
        raise DataError(f"{path} is not a readable .npz ({type(exc).__name__}: {exc}); "
                        "expected a file written by numpy.savez") from exc
    with npz:
        files = set(npz.files)
        if {"x", "y"} <= files:
            x, y = npz["x"], npz["y"]
            return finish(path.stem, x, y, None, None, str(path), {"source": "npz",
                          "location": str(path)})
        if set(_KERAS_KEYS) <= files:
            x, y, tx, ty = (npz[k] for k in _KERAS_KEYS)
            return finish(path.stem, x, y, (tx, ty), None, str(path), {"source": "npz-keras",
                          "location": str(path)})
    keras = any(k in files for k in _KERAS_KEYS)
    missing = [k for k in (_KERAS_KEYS if keras else ("x", "y")) if k not in files]
    raise DataError(
        f"{path} lacks array(s) {', '.join(missing)}; it holds {sorted(files)}, expected x (N, ...) "
        "and y (N,), or Keras's x_train, y_train, x_test, y_test"
    )
