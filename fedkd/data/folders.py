"""Reading a user's image folder: ``root/<class>/<image>``, or ``root/train/<class>/...`` and
``root/test/<class>/...`` for an official test split.

Owns: the folder layout (class names are the sorted folder names, so labels are 0..K-1 in that
order), the image suffixes read, and decoding with Pillow. Must not touch: the layout and scaling
rules (fedkd.data.layout), splits, torch, Flower.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedkd.data.layout import RawInput, finish, stack_images
from fedkd.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_image_folder(root: Path) -> RawInput:
    """Every image under ``root``, labelled by its class folder; uint8, greyscale or RGB."""
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
    return finish(root.name, x, y, test, len(classes), str(root), info)


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
    return paths, stack_images(images, [str(p) for p in paths]), np.asarray(labels, np.int64)


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError("reading images needs Pillow; pip install pillow") from exc
    return Image
