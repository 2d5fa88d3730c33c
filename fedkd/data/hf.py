"""Reading Hugging Face datasets: ``hf:NAME`` from the Hub (or its cache), ``save_to_disk``
folders, and ``.parquet`` files (a file, or a folder of them as the Hub stores a dataset).

Owns: the ``hf:`` prefix; going offline (cache only) when the Hub cannot be reached, after one
short probe, instead of waiting out retries; grouping parquet files into splits by name; and
picking the train / test splits and the image and label columns (``?train= ?test= ?image=
?label= ?subset=``, else by feature type, else by usual names). Parquet is read here because it
becomes a ``datasets.Dataset`` and shares all of that picking.

Must not touch: the layout and scaling rules (fedkd.data.layout), splits, torch, Flower. Nothing
here opens a socket except a Hub request for ``hf:NAME`` that is not a local path (and the probe).
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from fedkd.data.layout import RawInput, finish, stack_images
from fedkd.errors import DataError

HF_PREFIX = "hf:"
# Column names tried when a dataset has no Image / ClassLabel column, in this order.
_IMAGE_NAMES = ("image", "img", "pixel_values", "pixels", "x")
_LABEL_NAMES = ("label", "labels", "fine_label", "y", "target")
_PROBE_SECONDS = 3.0


# ---------------------------------------------------------------------------------------------
# The Hub, or its cache


def read_hub(name: str, options: dict[str, str]) -> RawInput:
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


# ---------------------------------------------------------------------------------------------
# save_to_disk folders and parquet files


def is_saved_dataset(path: Path) -> bool:
    return any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))


def read_saved(path: Path, options: dict[str, str]) -> RawInput:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path}: datasets.load_from_disk cannot read it ({exc}); expected a "
                        "folder written by Dataset.save_to_disk or DatasetDict.save_to_disk") from exc
    return _from_hf(path.name, loaded, options, str(path), {"source": "hf-disk", "location": str(path)})


def parquet_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*.parquet") if p.is_file())


def read_parquet(path: Path, options: dict[str, str]) -> RawInput:
    """One .parquet file, or a folder of them grouped into splits by name: the Hub's
    ``train-00000-of-00002.parquet`` belongs to split "train"."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable

    if not path.exists():
        raise DataError(f"parquet file {path} does not exist")
    files = [path] if path.is_file() else parquet_files(path)
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


# ---------------------------------------------------------------------------------------------
# A Dataset or DatasetDict -> RawInput


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
    return finish(name, x, y, test_xy, num_classes, where, info)


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
        x = stack_images(ds[image], [f"{where} row {i}" for i in range(len(ds))])
    else:
        x = np.asarray(ds.with_format("numpy")[image])
        if x.dtype == object:
            raise DataError(f"{where}: column {image!r} holds examples of different shapes; "
                            "expected one shape for every example")
    return x, np.asarray(ds.with_format("numpy")[label])
