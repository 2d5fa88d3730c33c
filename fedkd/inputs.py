"""Inputs as users hold them, read into one channels-first layout with one scaling rule.

Owns: ``DataError``; the dataset string (``SOURCE[?key=value&...]``) for everything that is not
a built-in name; the readers for user-held inputs (a ``.npz`` in fedkd's ``x``/``y`` layout or
Keras's ``x_train``/``y_train``/``x_test``/``y_test``, a Hugging Face dataset from the Hub or its
cache, a ``save_to_disk`` folder, ``.parquet`` files, an image folder ``root/<class>/<image>``);
and the rules that turn what they hold into float32 inputs:

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
std 1. The built-in datasets in fedkd.data use their own fixed constants instead.

Must not touch: splits, partitions, torch, Flower. Nothing here opens a socket except a Hub
request for ``hf:NAME`` that is not a local path (and one reachability probe before it).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qsl, urlparse

import numpy as np

from fedkd.errors import DataError




HF_PREFIX = "hf:"
HF_OPTIONS = ("image", "label", "train", "test", "subset")  # keys after '?' in a dataset string
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Column names tried when a dataset has no Image / ClassLabel column, in this order.
_IMAGE_NAMES = ("image", "img", "pixel_values", "pixels", "x")
_LABEL_NAMES = ("label", "labels", "fine_label", "y", "target")
_CHANNEL_COUNTS = (1, 3, 4)  # grey, RGB, RGBA
_MIN_STD = 1e-6
_PROBE_SECONDS = 3.0


@dataclass(frozen=True, eq=False)
class RawInput:
    """What a reader found: channels-first arrays, not yet scaled, and how they were resolved."""

    name: str
    x: np.ndarray  # (N, *input_shape) channels first, dtype as stored
    y: np.ndarray  # (N,) int64
    test: tuple[np.ndarray, np.ndarray] | None  # an official test split, same layout
    num_classes: int
    kind: str  # "0-255", "0-1" or "as-given"
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
# The dataset string


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'SOURCE?key=value&...' -> (SOURCE, options); only the keys in HF_OPTIONS are allowed."""
    source, _, query = spec.partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=False, strict_parsing=bool(query))
    except ValueError as exc:
        raise DataError(f"dataset {spec!r}: cannot read the options after '?' ({exc}); "
                        "expected key=value pairs joined by &") from exc
    options = dict(pairs)
    unknown = sorted(set(options) - set(HF_OPTIONS))
    if unknown:
        raise DataError(f"dataset {spec!r}: unknown option(s) {', '.join(unknown)}; "
                        f"choose from {', '.join(HF_OPTIONS)}")
    return source, options


def canonical(spec: str) -> str:
    """The spec with a local path made absolute, so equal inputs share one cache entry."""
    source, _, query = spec.partition("?")
    hf = source.startswith(HF_PREFIX)
    local = Path(source[len(HF_PREFIX):] if hf else source).expanduser()
    if hf and not local.exists():
        return spec  # a Hub name
    if not hf and not local.exists() and not source.endswith((".npz", ".parquet")):
        raise DataError(
            f"unknown dataset {spec!r}: not a built-in name (digits, mnist, fashion-mnist, "
            "cifar10), no file or folder of that name exists, and it does not start with hf:; "
            "give a .npz or .parquet file, a dataset or image folder, or hf:NAME"
        )
    resolved = str(local.resolve())
    return (HF_PREFIX if hf else "") + resolved + (f"?{query}" if query else "")


@functools.lru_cache(maxsize=2)
def read_input(spec: str) -> RawInput:
    """Read a canonical() dataset string; cached, so the arrays come back read-only."""
    source, options = parse_spec(spec)
    hf = source.startswith(HF_PREFIX)
    path = Path(source[len(HF_PREFIX):] if hf else source)
    if hf and not path.exists():
        raw = _read_hub(source[len(HF_PREFIX):], options)
    elif path.suffix == ".npz":
        _no_options(spec, options, "a .npz file")
        raw = _read_npz(path)
    elif path.suffix == ".parquet" or path.is_dir() and _parquet_files(path):
        raw = _read_parquet(path, options)
    elif path.is_dir() and _is_saved_dataset(path):
        raw = _read_saved(path, options)
    elif path.is_dir():
        _no_options(spec, options, "an image folder")
        raw = _read_image_folder(path)
    elif not path.exists():
        raise DataError(f"{path} does not exist")
    else:
        raise DataError(
            f"{path}: found a file of type {path.suffix or '(no suffix)'}; expected a .npz or "
            ".parquet file, a save_to_disk folder, a parquet folder, or an image folder"
        )
    for arr in (raw.x, raw.y, *(raw.test or ())):
        arr.setflags(write=False)
    return raw


def _no_options(spec: str, options: dict[str, str], what: str) -> None:
    if options:
        raise DataError(f"dataset {spec!r}: options {', '.join(sorted(options))} apply to Hugging "
                        f"Face datasets and parquet files, not to {what}")


def _finish(name: str, x: np.ndarray, y: np.ndarray, test: tuple[np.ndarray, np.ndarray] | None,
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


# ---------------------------------------------------------------------------------------------
# .npz: fedkd's x / y, or Keras's four arrays

_KERAS_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _read_npz(path: Path) -> RawInput:
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
            return _finish(path.stem, x, y, None, None, str(path), {"source": "npz",
                           "location": str(path)})
        if set(_KERAS_KEYS) <= files:
            x, y, tx, ty = (npz[k] for k in _KERAS_KEYS)
            return _finish(path.stem, x, y, (tx, ty), None, str(path), {"source": "npz-keras",
                           "location": str(path)})
    keras = any(k in files for k in _KERAS_KEYS)
    missing = [k for k in (_KERAS_KEYS if keras else ("x", "y")) if k not in files]
    raise DataError(
        f"{path} lacks array(s) {', '.join(missing)}; it holds {sorted(files)}, expected x (N, ...) "
        "and y (N,), or Keras's x_train, y_train, x_test, y_test"
    )


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets: the Hub (or its cache), save_to_disk folders, parquet files


def _read_hub(name: str, options: dict[str, str]) -> RawInput:
    """``datasets.load_dataset(name)``: from the cache when offline, else from the Hub."""
    import datasets

    where = f"{HF_PREFIX}{name}"
    offline = datasets.config.HF_HUB_OFFLINE
    if not offline and not _hub_reachable():
        offline = True  # the cache may still hold it; don't spend ~25 s on retries first
    try:
        with _hub_offline(offline):
            loaded = datasets.load_dataset(name, options.get("subset"))
    except Exception as exc:  # ConnectionError, FileNotFoundError, ValueError, ... from the Hub
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = ("offline and not in the Hugging Face cache; on a machine with access run "
                "datasets.load_dataset(...).save_to_disk(FOLDER) and pass that folder"
                if offline else "check the name and any ?subset=")
        raise DataError(f"{where}: could not load it ({why}); {hint}") from exc
    return _from_hf(name, loaded, options, where, {"source": "hf-hub", "location": name,
                                                   "offline": bool(offline)})


def _hub_reachable() -> bool:
    """One TCP connect to the Hub endpoint, so an offline machine fails in seconds."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=_PROBE_SECONDS):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Put datasets and huggingface_hub in offline mode (cache only) for one call."""
    import datasets
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = bool(offline or saved[0])
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _is_saved_dataset(path: Path) -> bool:
    return any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))


def _read_saved(path: Path, options: dict[str, str]) -> RawInput:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path}: datasets.load_from_disk cannot read it ({exc}); expected a "
                        "folder written by Dataset.save_to_disk or DatasetDict.save_to_disk") from exc
    return _from_hf(path.name, loaded, options, str(path), {"source": "hf-disk", "location": str(path)})


def _parquet_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*.parquet") if p.is_file())


def _read_parquet(path: Path, options: dict[str, str]) -> RawInput:
    """One .parquet file, or a folder of them grouped into splits by name: the Hub's
    ``train-00000-of-00002.parquet`` belongs to split "train"."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable

    if not path.exists():
        raise DataError(f"parquet file {path} does not exist")
    files = [path] if path.is_file() else _parquet_files(path)
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(f.stem.split("-")[0], []).append(f)
    splits = {}
    for split, members in groups.items():
        try:
            table = pa.concat_tables([pq.read_table(f) for f in members])
        except Exception as exc:  # ArrowInvalid for a bad file or mismatched schemas
            names = ", ".join(str(f) for f in members)
            raise DataError(f"{names}: cannot read as one parquet table ({exc}); expected parquet "
                            "files with the same columns") from exc
        splits[split] = datasets.Dataset(InMemoryTable(table))
    loaded = datasets.DatasetDict(splits) if path.is_dir() else splits[next(iter(splits))]
    return _from_hf(path.stem if path.is_file() else path.name, loaded, options, str(path),
                    {"source": "parquet", "location": str(path)})


def _from_hf(name: str, loaded: Any, options: dict[str, str], where: str,
             info: dict[str, Any]) -> RawInput:
    """A Dataset or DatasetDict -> RawInput: pick the splits and the image and label columns."""
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        train_name = _pick_split(loaded, options.get("train"), "train", where, required=True)
        test_name = _pick_split(loaded, options.get("test"), "test", where, required=False)
        train, test = loaded[train_name], (loaded[test_name] if test_name else None)
        info["splits_used"] = {"train": train_name, "test": test_name}
    else:
        if "train" in options or "test" in options:
            raise DataError(f"{where} holds one split, so ?train= and ?test= do not apply")
        train, test = loaded, None
    image = _pick_column(train, options.get("image"), datasets.Image, _IMAGE_NAMES, "image", where)
    label = _pick_column(train, options.get("label"), datasets.ClassLabel, _LABEL_NAMES, "label", where)
    feature = train.features[label]
    num_classes = feature.num_classes if isinstance(feature, datasets.ClassLabel) else None
    x, y = _columns(train, image, label, where)
    test_xy = _columns(test, image, label, f"{where} (test)") if test is not None else None
    info["columns"] = {"image": image, "label": label}
    if num_classes is not None:
        info["class_names"] = list(feature.names)
    return _finish(name, x, y, test_xy, num_classes, where, info)


def _pick_split(loaded: Any, asked: str | None, usual: str, where: str, required: bool) -> str | None:
    names = list(loaded.keys())
    if asked is not None:
        if asked not in loaded:
            raise DataError(f"{where}: no split {asked!r}; it holds {', '.join(names)}")
        return asked
    if usual in loaded:
        return usual
    if required and len(names) == 1:
        return names[0]
    if required:
        raise DataError(f"{where} holds splits {', '.join(names)} but none named 'train'; "
                        "choose one with ?train=NAME")
    return None


def _pick_column(ds: Any, asked: str | None, feature_type: type, usual: tuple[str, ...],
                 role: str, where: str) -> str:
    features = ds.features
    if asked is not None:
        if asked not in features:
            raise DataError(f"{where}: no column {asked!r}; it has {', '.join(features)}")
        return asked
    for column, feature in features.items():
        if isinstance(feature, feature_type):
            return column
    for column in usual:
        if column in features:
            return column
    kinds = ", ".join(f"{c} ({type(f).__name__})" for c, f in features.items())
    raise DataError(f"{where}: found no {role} column among {kinds}; expected a "
                    f"{feature_type.__name__} column or one named {'/'.join(usual)}, or name it "
                    f"with ?{role}=COLUMN")


def _columns(ds: Any, image: str, label: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(x as stored, y) of one split; Image columns are decoded with PIL."""
    import datasets

    if isinstance(ds.features[image], datasets.Image):
        x = _stack_images(ds[image], [f"{where} row {i}" for i in range(len(ds))])
    else:
        x = np.asarray(ds.with_format("numpy")[image])
        if x.dtype == object:
            raise DataError(f"{where}: column {image!r} holds examples of different shapes; "
                            "expected one shape for every example")
    return x, np.asarray(ds.with_format("numpy")[label])


# ---------------------------------------------------------------------------------------------
# Image folders: root/<class>/<image>, or root/train/<class>/... and root/test/<class>/...


def _read_image_folder(root: Path) -> RawInput:
    split_dirs = [root / s for s in ("train", "test")]
    has_splits = all(d.is_dir() and any(c.is_dir() for c in d.iterdir()) for d in split_dirs)
    tops = split_dirs if has_splits else [root]
    classes = sorted({c.name for top in tops for c in top.iterdir() if c.is_dir()})
    if not classes:
        raise DataError(f"{root}: found no class folders; expected an image folder "
                        f"{root}/<class>/<image> (or .npz, .parquet, a save_to_disk folder)")
    read = [_image_split(top, classes) for top in tops]
    (paths, x, y) = read[0]
    test = (read[1][1], read[1][2]) if has_splits else None
    info = {"source": "image-folder", "location": str(root), "class_names": classes,
            "first_image": str(paths[0])}
    return _finish(root.name, x, y, test, len(classes), str(root), info)


def _image_split(top: Path, classes: list[str]) -> tuple[list[Path], np.ndarray, np.ndarray]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = top / name
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
            if folder.is_dir() else []
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise DataError(f"{top}: class folders {', '.join(classes)} hold no images; expected "
                        f"files ending in {', '.join(IMAGE_SUFFIXES)}")
    images = []
    Image = _pil()
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                images.append(im)
        except Exception as exc:  # PIL raises several types for broken files
            raise DataError(f"{p}: PIL cannot read it as an image ({exc}); expected one of "
                            f"{', '.join(IMAGE_SUFFIXES)}") from exc
    return paths, _stack_images(images, [str(p) for p in paths]), np.asarray(labels, np.int64)


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError("reading images needs Pillow; pip install pillow") from exc
    return Image


def _stack_images(images: Iterable[Any], names: list[str]) -> np.ndarray:
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

