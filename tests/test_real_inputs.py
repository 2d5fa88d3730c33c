"""Inputs as users hold them: raw uint8 and channels-last .npz, Keras's .npz, Hugging Face
datasets saved to disk or as parquet, image folders, and hf:NAME offline.

Every file is made here, in tmp_path, from class-dependent patterns a small model can learn;
nothing touches the network. Each format is checked twice: the loaded arrays have the right
layout and the documented scaling, and a real 2-round Flower simulation learns from them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import socket

import numpy as np
import pytest

from fedkd.data import DataError, describe_splits, load_splits
from fedkd.data.layout import fit_scaling, to_channels_first, value_kind

K = 4  # classes; chance accuracy is 0.25


def patterns(n_per_class: int = 60, size: int = 8, channels: int = 3, seed: int = 0):
    """x (N, size, size, channels) uint8, y (N,): class c lights quadrant c in channel c % C,
    on a noisy grey background; channels=0 gives greyscale (N, size, size)."""
    rng = np.random.default_rng(seed)
    c_out = max(channels, 1)
    y = np.repeat(np.arange(K), n_per_class)
    x = rng.normal(70, 35, size=(len(y), size, size, c_out))
    h = size // 2
    for c in range(K):
        r, q = divmod(c, 2)
        x[y == c, r * h:(r + 1) * h, q * h:(q + 1) * h, c % c_out] += 120
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    order = rng.permutation(len(y))  # mix the classes, as real files are
    x, y = x[order], y[order]
    return (x[..., 0] if channels == 0 else x), y


SPLIT = dict(num_clients=3, num_public=40, partition="iid", seed=0)


def _standardised(raw_cf: np.ndarray, s) -> np.ndarray:
    """What the documented rule gives for channels-first uint8 examples."""
    d = describe_splits(s)
    mean = np.asarray(d["mean"]).reshape(1, -1, 1, 1)
    std = np.asarray(d["std"]).reshape(1, -1, 1, 1)
    return (raw_cf / 255.0 - mean) / std


def _each_is_rule_of_a_stored_example(s, expected: np.ndarray, y: np.ndarray) -> None:
    """Every test and public example equals the rule applied to a stored example of its label."""
    for xs, ys in ((s.test_x, s.test_y), (s.public_x, s.public_y)):
        for row, label in zip(xs, ys):
            gap = np.abs(expected - row).reshape(len(expected), -1).max(axis=1)
            nearest = int(gap.argmin())
            assert gap[nearest] < 1e-4 and y[nearest] == label


def _public_is_standardised(s) -> None:
    """Statistics come from the public set, so there each channel has mean 0 and std 1."""
    pub = s.public_x.astype(np.float64)
    np.testing.assert_allclose(pub.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(pub.std(axis=(0, 2, 3)), 1.0, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# The rules on their own


@pytest.mark.parametrize(
    ("array", "kind"),
    [
        (np.array([[0, 3]], np.uint8), "0-255"),
        (np.array([[0, 200]], np.int64), "0-255"),
        (np.array([[0.0, 255.0]]), "0-255"),  # whole numbers saved as floats: still pixels
        (np.array([[0.0, 0.5, 1.0]]), "0-1"),
        (np.array([[0, 1]], np.int32), "0-1"),
        (np.array([[-1.2, 0.3]]), "as-given"),  # already standardised
        (np.array([[0.5, 3.5]]), "0-255"),  # non-negative, at most 255: / 255 then standardised
        (np.array([[0.0, 254.97]], np.float32), "0-255"),  # resized pixels are fractional
        (np.array([[0, 256]], np.int16), "as-given"),  # beyond 8 bits: your own units
    ],
)
def test_value_kind_follows_the_documented_rule(array, kind):
    assert value_kind(array) == kind


@pytest.mark.parametrize(
    ("shape", "after"),
    [
        ((5, 7), (5, 7)),
        ((5, 28, 28), (5, 1, 28, 28)),
        ((5, 32, 32, 3), (5, 3, 32, 32)),
        ((5, 28, 28, 1), (5, 1, 28, 28)),
        ((5, 3, 32, 32), (5, 3, 32, 32)),
        ((5, 1, 28, 28), (5, 1, 28, 28)),
    ],
)
def test_layouts_become_channels_first(shape, after):
    x = np.arange(np.prod(shape)).reshape(shape)
    out, _ = to_channels_first(x, "here")
    assert out.shape == after
    if len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3):
        assert np.array_equal(out, x.transpose(0, 3, 1, 2))


def test_scaling_measures_per_channel_on_what_it_is_given_and_guards_flat_channels():
    x = np.zeros((4, 2, 3, 3), np.uint8)
    x[:, 0] = [[[0]], [[255]], [[0]], [[255]]]  # channel 0: half black, half white
    x[:, 1] = 51  # channel 1: flat
    scaling = fit_scaling("0-255", x)
    np.testing.assert_allclose(scaling.mean, (0.5, 0.2))
    np.testing.assert_allclose(scaling.std, (0.5, 1.0))  # flat channel keeps std 1
    out = scaling.apply(x)
    np.testing.assert_allclose(out[:, 0, 0, 0], [-1, 1, -1, 1], atol=1e-6)
    np.testing.assert_allclose(out[:, 1], 0.0, atol=1e-6)
    assert fit_scaling("as-given", x).apply(x).dtype == np.float32


# ---------------------------------------------------------------------------------------------
# Each input kind loads with the right layout and scaling


def test_raw_uint8_greyscale_npz_is_scaled_and_standardised(tmp_path):
    x, y = patterns(channels=0)
    np.savez(tmp_path / "grey.npz", x=x, y=y)
    s = load_splits(str(tmp_path / "grey.npz"), **SPLIT)
    d = describe_splits(s)
    assert (s.input_shape, s.num_classes) == ((1, 8, 8), K)
    assert (d["source"], d["value_kind"], d["raw_shape"], d["raw_dtype"]) == ("npz", "0-255", [8, 8], "uint8")
    assert d["stats_from"] == "public set" and d["test_split"] == "test-fraction=0.2"
    assert d["sizes"] == {"private": 152, "public": 40, "test": 48, "clients": [51, 51, 50]}
    _public_is_standardised(s)
    _each_is_rule_of_a_stored_example(s, _standardised(x[:, None], s), y)
    json.dumps(d)  # plain data, ready for config.json


def test_channels_last_colour_npz_becomes_channels_first(tmp_path):
    x, y = patterns(size=32, n_per_class=15)  # (60, 32, 32, 3): once read as 32 channels
    np.savez(tmp_path / "colour.npz", x=x, y=y)
    s = load_splits(str(tmp_path / "colour.npz"), num_clients=2, num_public=12, partition="iid")
    d = describe_splits(s)
    assert s.input_shape == (3, 32, 32) and d["raw_shape"] == [32, 32, 3]
    assert d["layout"].startswith("channels last") and len(d["mean"]) == 3
    _public_is_standardised(s)
    _each_is_rule_of_a_stored_example(s, _standardised(x.transpose(0, 3, 1, 2), s), y)


def test_keras_layout_npz_keeps_its_own_test_split(tmp_path):
    x, y = patterns(channels=0, n_per_class=40)
    tx, ty = patterns(channels=0, n_per_class=5, seed=1)
    # keras.datasets.cifar10 gives labels as (N, 1); mnist as (N,)
    np.savez(tmp_path / "keras.npz", x_train=x, y_train=y[:, None], x_test=tx, y_test=ty)
    s = load_splits(str(tmp_path / "keras.npz"), **SPLIT)
    d = describe_splits(s)
    assert (d["source"], d["test_split"]) == ("npz-keras", "official")
    assert d["sizes"]["test"] == 20 and d["sizes"]["private"] + d["sizes"]["public"] == 160
    np.testing.assert_array_equal(s.test_y, ty)  # official test kept in its order
    np.testing.assert_allclose(s.test_x, _standardised(tx[:, None], s), rtol=1e-5, atol=1e-5)


def test_float_inputs_in_unit_range_are_standardised_and_others_kept(tmp_path):
    x, y = patterns(channels=0, n_per_class=20)
    np.savez(tmp_path / "unit.npz", x=x / 255.0, y=y)
    s = load_splits(str(tmp_path / "unit.npz"), **SPLIT)
    assert describe_splits(s)["value_kind"] == "0-1"
    _public_is_standardised(s)
    z = (x / 255.0 - 0.3) / 0.2  # the user standardised already
    np.savez(tmp_path / "done.npz", x=z, y=y)
    s = load_splits(str(tmp_path / "done.npz"), **SPLIT)
    d = describe_splits(s)
    assert (d["value_kind"], d["mean"], d["stats_from"]) == ("as-given", None, None)
    stored = {r.astype(np.float32).tobytes() for r in z}
    assert all(r[0].tobytes() in stored for r in s.test_x)  # bit-for-bit as given


def _hf_dataset(x, y, split_x=None, split_y=None, label_name="label"):
    """A datasets.DatasetDict with an Image column 'img' and a ClassLabel column."""
    import datasets
    from PIL import Image

    features = datasets.Features({"img": datasets.Image(),
                                  label_name: datasets.ClassLabel(names=list("abcd"))})

    def one(xs, ys):
        return datasets.Dataset.from_dict(
            {"img": [Image.fromarray(a) for a in xs], label_name: ys.tolist()}, features=features)

    parts = {"train": one(x, y)}
    if split_x is not None:
        parts["test"] = one(split_x, split_y)
    return datasets.DatasetDict(parts)


def test_hf_save_to_disk_folder_loads_with_its_splits_and_columns(tmp_path):
    x, y = patterns(channels=3, n_per_class=30)
    tx, ty = patterns(channels=3, n_per_class=4, seed=2)
    _hf_dataset(x, y, tx, ty, label_name="fine_label").save_to_disk(tmp_path / "hfdisk")
    s = load_splits(str(tmp_path / "hfdisk"), **SPLIT)
    d = describe_splits(s)
    assert (s.input_shape, s.num_classes) == ((3, 8, 8), K)
    assert d["source"] == "hf-disk" and d["columns"] == {"image": "img", "label": "fine_label"}
    assert d["class_names"] == list("abcd") and d["test_split"] == "official"
    np.testing.assert_array_equal(s.test_y, ty)
    np.testing.assert_allclose(s.test_x, _standardised(tx.transpose(0, 3, 1, 2), s), rtol=1e-5, atol=1e-5)
    # the same folder through the hf: prefix, naming the columns explicitly
    t = load_splits(f"hf:{tmp_path / 'hfdisk'}?image=img&label=fine_label", **SPLIT)
    assert t.test_x.tobytes() == s.test_x.tobytes()


def test_parquet_file_and_hub_style_parquet_folder(tmp_path):
    x, y = patterns(channels=0, n_per_class=30)
    tx, ty = patterns(channels=0, n_per_class=4, seed=3)
    dd = _hf_dataset(x, y, tx, ty)
    dd["train"].to_parquet(str(tmp_path / "one.parquet"))
    s = load_splits(str(tmp_path / "one.parquet"), **SPLIT)
    assert (s.input_shape, describe_splits(s)["source"]) == ((1, 8, 8), "parquet")
    assert describe_splits(s)["test_split"] == "test-fraction=0.2"
    # the Hub's layout: data/train-00000-of-00001.parquet, data/test-00000-of-00001.parquet
    (tmp_path / "hub" / "data").mkdir(parents=True)
    dd["train"].to_parquet(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))
    dd["test"].to_parquet(str(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet"))
    s = load_splits(str(tmp_path / "hub"), **SPLIT)
    d = describe_splits(s)
    assert d["test_split"] == "official" and d["splits_used"] == {"train": "train", "test": "test"}
    np.testing.assert_allclose(s.test_x, _standardised(tx[:, None], s), rtol=1e-5, atol=1e-5)


def _image_folder(root, x, y, names=("ant", "bee", "cat", "dog")):
    from PIL import Image

    for i, (a, label) in enumerate(zip(x, y)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(folder / f"{i:04d}.png")


def test_image_folder_reads_classes_from_folder_names(tmp_path):
    x, y = patterns(channels=3, n_per_class=20)
    _image_folder(tmp_path / "imgs", x, y)
    (tmp_path / "imgs" / "ant" / "notes.txt").write_text("not an image")  # ignored
    s = load_splits(str(tmp_path / "imgs"), **SPLIT)
    d = describe_splits(s)
    assert (s.input_shape, s.num_classes) == ((3, 8, 8), K)
    assert d["class_names"] == ["ant", "bee", "cat", "dog"] and d["source"] == "image-folder"
    _each_is_rule_of_a_stored_example(s, _standardised(x.transpose(0, 3, 1, 2), s), y)  # PNG: lossless


def test_image_folder_with_train_and_test_subfolders(tmp_path):
    x, y = patterns(channels=0, n_per_class=10)
    tx, ty = patterns(channels=0, n_per_class=2, seed=4)
    _image_folder(tmp_path / "root" / "train", x, y)
    _image_folder(tmp_path / "root" / "test", tx, ty)
    s = load_splits(str(tmp_path / "root"), num_clients=2, num_public=8, partition="iid")
    assert s.input_shape == (1, 8, 8)  # greyscale PNGs stay one channel
    assert describe_splits(s)["test_split"] == "official" and len(s.test_y) == 8


# ---------------------------------------------------------------------------------------------
# What cannot be read: one line naming the file, what was found and what was expected


def _one_line(exc_info, *parts):
    message = str(exc_info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message


def test_unreadable_inputs_are_one_line_each(tmp_path):
    from PIL import Image

    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError) as info:
        load_splits(str(bad))
    _one_line(info, str(bad), "not a readable .npz")

    half = tmp_path / "half.npz"
    np.savez(half, x_train=np.zeros((4, 2)), y_train=np.zeros(4, int))
    with pytest.raises(DataError) as info:
        load_splits(str(half))
    _one_line(info, str(half), "lacks array(s) x_test, y_test", "x_train")

    mixed = tmp_path / "mixed"
    for name, size in (("a", 8), ("b", 9)):
        (mixed / name).mkdir(parents=True)
        Image.fromarray(np.zeros((size, size), np.uint8)).save(mixed / name / "0.png")
    with pytest.raises(DataError) as info:
        load_splits(str(mixed))
    _one_line(info, str(mixed / "b" / "0.png"), "9x9", "8x8", "one size")

    corrupt = tmp_path / "corrupt" / "a"
    corrupt.mkdir(parents=True)
    (corrupt / "0.png").write_bytes(b"\x89PNG nonsense")
    with pytest.raises(DataError) as info:
        load_splits(str(tmp_path / "corrupt"))
    _one_line(info, str(corrupt / "0.png"), "cannot read it as an image")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        load_splits(str(empty))
    _one_line(info, str(empty), "no class folders", "<class>/<image>")

    other = tmp_path / "table.csv"
    other.write_text("a,b\n")
    with pytest.raises(DataError) as info:
        load_splits(str(other))
    _one_line(info, str(other), ".csv", "expected a .npz")

    with pytest.raises(DataError) as info:
        load_splits("imagenet")
    _one_line(info, "'imagenet'", "hf:NAME", ".npz")


def test_hf_columns_and_splits_that_do_not_fit_are_named(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"pic": [[[0, 1], [1, 0]]] * 8, "kind": ["x"] * 8})
    ds.save_to_disk(tmp_path / "odd")
    with pytest.raises(DataError) as info:
        load_splits(str(tmp_path / "odd"))
    _one_line(info, str(tmp_path / "odd"), "no image column", "pic (", "?image=COLUMN")
    with pytest.raises(DataError) as info:
        load_splits(f"{tmp_path / 'odd'}?image=pic&label=kind")
    _one_line(info, "y must be 1-D integer labels")
    with pytest.raises(DataError) as info:
        load_splits(f"{tmp_path / 'odd'}?colour=red")
    _one_line(info, "unknown option(s) colour", "image, label")
    x, y = patterns(channels=0, n_per_class=3)
    _hf_dataset(x, y).save_to_disk(tmp_path / "dd")
    with pytest.raises(DataError) as info:
        load_splits(f"{tmp_path / 'dd'}?test=validation")
    _one_line(info, "no split 'validation'", "train")


_OFFLINE_SCRIPT = """
import socket, sys
attempts = []
def refuse(*a, **k):
    attempts.append(a)
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
from fedkd.data import DataError, load_splits
try:
    load_splits("hf:nobody/no-such-dataset-xyz", num_clients=2)
except DataError as exc:
    print(f"{len(attempts)}|{exc}")
"""


def test_hub_dataset_offline_fails_in_one_line_without_network(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}  # an empty cache
    done = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)
    out = done.stdout.strip().splitlines()
    assert len(out) == 1, done.stdout + done.stderr
    attempts, message = out[0].split("|", 1)
    assert attempts == "0"  # offline means no connection attempt at all (and so no retries to wait out)
    assert message.startswith("hf:nobody/no-such-dataset-xyz: could not load it")
    assert "offline and not in the Hugging Face cache" in message and "save_to_disk" in message


def test_unreachable_hub_switches_to_the_cache_instead_of_retrying(monkeypatch, tmp_path):
    from fedkd.data import hf

    monkeypatch.setattr(hf, "_hub_reachable", lambda: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(DataError) as info:
        load_splits("hf:nobody/another-missing-one", num_clients=2)
    assert attempts == []  # once the probe says unreachable, the cache alone is read: nothing to retry
    _one_line(info, "offline and not in the Hugging Face cache")
    import datasets
    from huggingface_hub import constants

    assert not datasets.config.HF_HUB_OFFLINE and not constants.HF_HUB_OFFLINE  # restored


# ---------------------------------------------------------------------------------------------
# Real 2-round Flower simulations on each kind: learnable, so well above chance (0.25)

SIM = dict(num_clients=3, rounds=2, local_epochs=5, digest_epochs=1, distill_epochs=15,
           num_public=40, partition="iid", client_cpus=1.0)


def _simulate(tmp_path, dataset: str) -> dict:
    from fedkd.cli import simulate
    from fedkd.config import Config

    cfg = Config(**SIM, dataset=dataset, out=str(tmp_path / "run")).validated()
    final = simulate(cfg)["final"]
    assert final["student_accuracy"] > 0.6, final  # chance is 0.25
    assert final["teacher_accuracy_mean"] > 0.5, final
    return final


def test_simulation_on_raw_uint8_channels_last_npz(tmp_path):
    x, y = patterns(channels=3)
    np.savez(tmp_path / "raw.npz", x=x, y=y)
    _simulate(tmp_path, str(tmp_path / "raw.npz"))


def test_simulation_on_hf_save_to_disk_folder(tmp_path):
    x, y = patterns(channels=0)
    tx, ty = patterns(channels=0, n_per_class=12, seed=5)
    _hf_dataset(x, y, tx, ty).save_to_disk(tmp_path / "hf")
    _simulate(tmp_path, f"hf:{tmp_path / 'hf'}")


def test_simulation_on_keras_npz(tmp_path):
    x, y = patterns(channels=0)
    tx, ty = patterns(channels=0, n_per_class=12, seed=6)
    np.savez(tmp_path / "keras.npz", x_train=x, y_train=y, x_test=tx, y_test=ty)
    _simulate(tmp_path, str(tmp_path / "keras.npz"))


@pytest.mark.slow
def test_simulation_on_parquet_folder(tmp_path):
    x, y = patterns(channels=3)
    (tmp_path / "pq").mkdir()
    _hf_dataset(x, y)["train"].to_parquet(str(tmp_path / "pq" / "train-00000-of-00001.parquet"))
    _simulate(tmp_path, str(tmp_path / "pq"))


@pytest.mark.slow
def test_simulation_on_image_folder(tmp_path):
    x, y = patterns(channels=3)
    _image_folder(tmp_path / "imgs", x, y)
    _simulate(tmp_path, str(tmp_path / "imgs"))
