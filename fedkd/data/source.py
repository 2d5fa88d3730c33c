"""A user's input named by a dataset string, and which reader takes it.

Owns: the dataset string for everything that is not a built-in name, ``SOURCE[?key=value&...]``
with SOURCE a ``.npz`` or ``.parquet`` file, a ``save_to_disk``, parquet or image folder, or
``hf:NAME`` (the Hub or its cache), and the keys allowed after '?'; its canonical form (a local
path made absolute, so equal inputs share one cache entry); and the choice of reader, one module
per source kind: fedkd.data.npz, fedkd.data.hf (Hub, save_to_disk, parquet), fedkd.data.folders.

Must not touch: the readers' rules (their modules), the layout and scaling rules
(fedkd.data.layout), splits, torch, Flower.
"""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import parse_qsl

from fedkd.data import folders, hf, npz
from fedkd.data.builtin import DATASETS
from fedkd.data.hf import HF_PREFIX
from fedkd.data.layout import RawInput
from fedkd.errors import DataError

HF_OPTIONS = ("image", "label", "train", "test", "subset")  # keys after '?' in a dataset string


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


def names_an_input(spec: str) -> bool:
    """Whether `spec` can name a user's input at all: hf:NAME, a path ending .npz or .parquet, or
    a file or folder that exists. Whether it can be read is the reader's check."""
    source = spec.partition("?")[0]
    return (source.startswith(HF_PREFIX) or source.endswith((".npz", ".parquet"))
            or Path(source).expanduser().exists())


def canonical(spec: str) -> str:
    """The spec with a local path made absolute, so equal inputs share one cache entry."""
    source, _, query = spec.partition("?")
    hf_name = source.startswith(HF_PREFIX)
    local = Path(source[len(HF_PREFIX):] if hf_name else source).expanduser()
    if hf_name and not local.exists():
        return spec  # a Hub name
    if not names_an_input(spec):
        raise DataError(
            f"unknown dataset {spec!r}: not a built-in name ({', '.join(DATASETS)}), "
            "no file or folder of that name exists, and it does not start with hf:; "
            "give a .npz or .parquet file, a dataset or image folder, or hf:NAME"
        )
    resolved = str(local.resolve())
    return (HF_PREFIX if hf_name else "") + resolved + (f"?{query}" if query else "")


@functools.lru_cache(maxsize=2)
def read_input(spec: str) -> RawInput:
    """Read a canonical() dataset string; cached, so the arrays come back read-only."""
    source, options = parse_spec(spec)
    hf_name = source.startswith(HF_PREFIX)
    path = Path(source[len(HF_PREFIX):] if hf_name else source)
    if hf_name and not path.exists():
        raw = hf.read_hub(source[len(HF_PREFIX):], options)
    elif path.suffix == ".npz":
        _no_options(spec, options, "a .npz file")
        raw = npz.read_npz(path)
    elif path.suffix == ".parquet" or path.is_dir() and hf.parquet_files(path):
        raw = hf.read_parquet(path, options)
    elif path.is_dir() and hf.is_saved_dataset(path):
        raw = hf.read_saved(path, options)
    elif path.is_dir():
        _no_options(spec, options, "an image folder")
        raw = folders.read_image_folder(path)
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
