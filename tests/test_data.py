"""Tests for fedkd.data: splits, partitions, validation errors and the file readers.

Everything runs on sklearn's digits or on tiny files written into tmp_path; no network.
"""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import struct
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkd import data
from fedkd.data import DATASETS, PARTITIONS, DataError, Splits, load_splits

SMALL = settings(max_examples=12, deadline=None)


def _uncached(**kwargs) -> Splits:
    """load_splits computed afresh, so reproducibility tests do not just compare a cache hit."""
    data.splits._build_splits.cache_clear()
    return load_splits(**kwargs)


def _assert_identical(a: Splits, b: Splits) -> None:
    for field in ("private_x", "private_y", "public_x", "public_y", "test_x", "test_y"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), field
    assert len(a.partitions) == len(b.partitions)
    for p, q in zip(a.partitions, b.partitions):
        assert p.tobytes() == q.tobytes()


def _entropy(labels: np.ndarray, num_classes: int) -> float:
    p = np.bincount(labels, minlength=num_classes) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------------------------------------
# Partitions: coverage, reproducibility, scheme-specific shape


partition_args = st.one_of(
    st.builds(lambda n: {"partition": "iid", "num_clients": n}, st.integers(2, 12)),
    st.builds(
        lambda n, a: {"partition": "dirichlet", "num_clients": n, "alpha": a},
        st.integers(2, 8), st.floats(0.3, 100.0),
    ),
    # Deterministic label assignment covers all 10 labels only when n + k - 1 >= 10.
    st.integers(2, 12).flatmap(lambda n: st.builds(
        lambda k: {"partition": "pathological", "num_clients": n, "classes_per_client": k},
        st.integers(max(1, 11 - n), 10),
    )),
)


@SMALL
@given(args=partition_args, seed=st.integers(0, 2**16))
def test_partitions_cover_private_pool_exactly_once(args, seed):
    s = load_splits("digits", seed=seed, num_public=300, **args)
    assert len(s.partitions) == args["num_clients"]
    flat = np.concatenate(s.partitions)
    assert flat.dtype == np.int64
    assert np.array_equal(np.sort(flat), np.arange(len(s.private_y)))
    assert min(len(p) for p in s.partitions) >= 1


@pytest.mark.parametrize("partition", PARTITIONS)
def test_same_seed_gives_bitwise_identical_splits(partition):
    a = _uncached(dataset="digits", partition=partition, seed=7)
    b = _uncached(dataset="digits", partition=partition, seed=7)
    assert a is not b
    _assert_identical(a, b)


@pytest.mark.parametrize("partition", PARTITIONS)
def test_different_seed_gives_different_partitions(partition):
    a = load_splits("digits", partition=partition, seed=1)
    b = load_splits("digits", partition=partition, seed=2)

    def rows(s: Splits, cid: int) -> list[bytes]:  # which examples, ignoring their order
        return sorted(row.tobytes() for row in s.client(cid)[0])

    assert any(rows(a, cid) != rows(b, cid) for cid in range(len(a.partitions)))


def test_pathological_gives_each_client_its_k_labels():
    s = load_splits("digits", partition="pathological", num_clients=10, classes_per_client=3)
    for cid, idx in enumerate(s.partitions):
        labels = set(s.private_y[idx].tolist())
        # Deterministic assignment: client c holds labels c, c+1, c+2 (mod 10).
        assert labels == {(cid + i) % 10 for i in range(3)}


def test_small_alpha_is_more_skewed_than_large_alpha():
    def mean_entropy(alpha: float) -> float:
        s = load_splits("digits", partition="dirichlet", alpha=alpha, num_clients=5, seed=3)
        return float(np.mean([_entropy(s.private_y[p], 10) for p in s.partitions]))

    skewed, flat = mean_entropy(0.1), mean_entropy(100.0)
    assert skewed < flat - 0.5
    assert flat > 0.95 * np.log(10)  # alpha=100 is close to uniform labels per client


def test_iid_clients_differ_in_size_by_at_most_one():
    sizes = [len(p) for p in load_splits("digits", partition="iid", num_clients=7).partitions]
    assert max(sizes) - min(sizes) <= 1


# ---------------------------------------------------------------------------------------------
# Test / public / private splits


def test_test_public_private_are_disjoint_and_cover_digits():
    from sklearn.datasets import load_digits

    images = (load_digits().images / 16.0).astype(np.float32)  # as fedkd.data scales them
    everything = Counter(row.tobytes() for row in images)
    s = load_splits("digits", num_public=400, test_fraction=0.25, seed=5)
    held = Counter(
        row.tobytes() for part in (s.private_x, s.public_x, s.test_x) for row in part[:, 0]
    )
    assert held == everything  # same multiset of rows: disjoint, and nothing lost
    assert (len(s.public_y), len(s.test_y)) == (400, round(0.25 * 1797))
    assert len(s.private_y) == 1797 - 400 - len(s.test_y)


def test_public_and_test_sets_are_stratified():
    s = load_splits("digits", num_public=500, test_fraction=0.2)
    for labels, n in ((s.public_y, 500), (s.test_y, len(s.test_y))):
        counts = np.bincount(labels, minlength=10)
        assert counts.sum() == n
        assert counts.max() - counts.min() <= 3  # digits is almost balanced (174..183 per label)


def test_digits_shapes_types_and_scale():
    s = load_splits("digits", num_clients=4)
    assert (s.name, s.num_classes, s.input_shape) == ("digits", 10, (1, 8, 8))
    for x, y in ((s.private_x, s.private_y), (s.public_x, s.public_y), (s.test_x, s.test_y)):
        assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape[1:] == (1, 8, 8)
        assert 0.0 <= x.min() and x.max() <= 1.0
    x0, y0 = s.client(0)
    assert np.array_equal(x0, s.private_x[s.partitions[0]])
    assert np.array_equal(y0, s.private_y[s.partitions[0]])


def test_returned_arrays_are_read_only_and_cached():
    s = load_splits("digits", num_clients=3)
    assert load_splits("digits", num_clients=3) is s
    for arr in (s.private_x, s.private_y, s.public_x, s.public_y, s.test_x, s.test_y,
                *s.partitions):
        assert not arr.flags.writeable
    with pytest.raises(ValueError):
        s.private_x[0, 0, 0, 0] = 1.0
    x, _ = s.client(1)
    x[0] = 0.0  # client() hands out copies, so writing them cannot touch the cache
    assert s.private_x[s.partitions[1][0]].any()


def test_digits_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("fedkd.data tried to open a socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    data.builtin.read.cache_clear()
    s = _uncached(dataset="digits", num_clients=3, seed=11)
    assert len(s.partitions) == 3


# ---------------------------------------------------------------------------------------------
# Validation: one DataError naming the bad value


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"dataset": "imagenet"}, ["'imagenet'", "digits", ".npz"]),
        ({"partition": "shards"}, ["'shards'", "iid", "dirichlet", "pathological"]),
        ({"alpha": 0}, ["alpha=0", "> 0"]),
        ({"alpha": -1.5}, ["alpha=-1.5"]),
        ({"alpha": float("nan")}, ["alpha=nan"]),
        ({"num_clients": 1}, ["num-clients=1", "at least 2"]),
        ({"num_clients": 2000}, ["num-clients=2000", "only 1438 training"]),
        ({"num_public": 0}, ["num-public=0"]),
        ({"num_public": 5000}, ["num-public=5000", "1428 available"]),
        ({"test_fraction": 0.0}, ["test-fraction=0.0", "between 0 and 1"]),
        ({"test_fraction": 1.0}, ["test-fraction=1.0"]),
        ({"test_fraction": 1e-6}, ["test-fraction=1e-06", "0 test"]),
        ({"partition": "pathological", "classes_per_client": 0}, ["classes-per-client=0",
                                                                  "[1, 10]"]),
        ({"partition": "pathological", "classes_per_client": 11}, ["classes-per-client=11"]),
        ({"partition": "pathological", "num_clients": 3, "classes_per_client": 2},
         ["reaches only 4 of 10 labels", "num-clients + classes-per-client - 1 >= 10"]),
        ({"min_partition_size": 0}, ["min-partition-size=0"]),
        ({"seed": -1}, ["seed=-1"]),
        ({"partition": "dirichlet", "alpha": 0.01, "num_clients": 10, "min_partition_size": 60,
          "num_public": 100}, ["alpha=0.01", "larger alpha", "min-partition-size"]),
    ],
)
def test_bad_request_raises_data_error_naming_the_value(kwargs, expected):
    kwargs = {"dataset": "digits", **kwargs}
    with pytest.raises(DataError) as info:
        load_splits(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_data_error_is_a_value_error_and_dataset_names_are_fixed():
    assert issubclass(DataError, ValueError)
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "cifar10"}


def test_client_too_small_names_the_client(tmp_path):
    # Label 0 is rare; with one label per client, client 0 gets only label 0's few examples.
    y = np.array([0] * 8 + [1] * 60 + [2] * 60)
    x = np.random.default_rng(0).normal(size=(len(y), 4))
    path = tmp_path / "rare.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(DataError, match=r"client 0 only \d+ examples.*min-partition-size=10"):
        load_splits(str(path), partition="pathological", classes_per_client=1, num_clients=3,
                    num_public=10, min_partition_size=10)


def test_check_partitions_rejects_empty_client_and_double_cover():
    with pytest.raises(DataError, match="client 1 only 0 examples"):
        data.partition._check_partitions((np.arange(3), np.arange(3, 3)), 3, 1, "iid")
    with pytest.raises(DataError, match="more than once"):
        data.partition._check_partitions((np.arange(3), np.array([2])), 3, 1, "iid")
    with pytest.raises(DataError, match="zero times"):
        data.partition._check_partitions((np.arange(2), np.array([3])), 4, 1, "iid")


def test_client_id_out_of_range():
    s = load_splits("digits", num_clients=3)
    with pytest.raises(DataError, match=r"client id 3 is out of range \[0, 3\)"):
        s.client(3)


# ---------------------------------------------------------------------------------------------
# .npz files


def test_npz_round_trip_with_2d_images(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5, 6)).astype(np.float64)  # (N, H, W): gets a channel axis
    y = np.repeat(np.arange(3), 20)
    path = tmp_path / "images.npz"
    np.savez(path, x=x, y=y)
    s = load_splits(str(path), num_clients=2, num_public=12, test_fraction=0.25, seed=1)
    assert (s.name, s.num_classes, s.input_shape) == ("images", 3, (1, 5, 6))
    assert (len(s.private_y), len(s.public_y), len(s.test_y)) == (33, 12, 15)
    # Normal draws are neither in [0, 1] nor whole 0..255: kept as given (only cast to float32),
    # and every row lands in exactly one split.
    rows = Counter(r.tobytes() for r in x.astype(np.float32))
    held = Counter(r.tobytes() for part in (s.private_x, s.public_x, s.test_x)
                   for r in part[:, 0])
    assert held == rows


def test_npz_round_trip_with_feature_vectors(tmp_path):
    x = np.arange(40 * 7, dtype=np.int32).reshape(40, 7)  # (N, F): kept as (F,)
    y = np.tile(np.arange(4), 10)
    path = tmp_path / "features.npz"
    np.savez(path, x=x, y=y)
    s = load_splits(str(path), num_clients=2, num_public=8, partition="iid")
    assert (s.num_classes, s.input_shape, s.private_x.dtype) == (4, (7,), np.float32)
    assert s.test_x.shape == (8, 7)
    # Row r is r*7 .. r*7+6, so its label is recoverable: check labels travelled with rows.
    for xs, ys in ((s.private_x, s.private_y), (s.public_x, s.public_y), (s.test_x, s.test_y)):
        assert np.array_equal((xs[:, 0] // 7).astype(np.int64) % 4, ys)


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"x": np.zeros((10, 3))}, "lacks array(s) y"),
        ({"images": np.zeros((10, 3)), "y": np.zeros(10, int)}, "lacks array(s) x"),
        ({"x": np.zeros((10, 3)), "y": np.zeros(9, int)}, "same length"),
        ({"x": np.zeros(10), "y": np.zeros(10, int)}, "at least 2-D"),
        ({"x": np.zeros((10, 3)), "y": np.zeros(10)}, "integer labels"),
        ({"x": np.zeros((10, 3)), "y": -np.ones(10, int)}, "found -1"),
        ({"x": np.full((10, 3), np.nan), "y": np.zeros(10, int)}, "non-finite"),
        ({"x": np.full((10, 3), 1e300), "y": np.zeros(10, int)}, "non-finite"),
    ],
)
def test_bad_npz_raises_data_error(tmp_path, arrays, expected):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as info:
        load_splits(str(path), num_public=2)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_missing_npz_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_splits(str(tmp_path / "nope.npz"))


# ---------------------------------------------------------------------------------------------
# MNIST-style IDX files and CIFAR-10 batches, written here in their real formats


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _fake_mnist(folder, gz: bool):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28)),
        "train-labels-idx1-ubyte": np.tile(np.arange(10), 3),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(10)[::-1],
    }
    for name, array in arrays.items():
        _write_idx(folder / (name + (".gz" if gz else "")), array)
    return arrays


@pytest.mark.parametrize(
    ("dataset", "layout", "gz", "mean", "std"),
    [
        ("mnist", "MNIST/raw", True, 0.1307, 0.3081),  # torchvision's layout, gzipped
        ("fashion-mnist", "", False, 0.2860, 0.3530),  # files directly in data_dir
    ],
)
def test_idx_reader_loads_tiny_mnist(tmp_path, dataset, layout, gz, mean, std):
    arrays = _fake_mnist(tmp_path / layout, gz)
    s = load_splits(dataset, data_dir=str(tmp_path), num_clients=2, num_public=10,
                    partition="iid")
    assert (s.num_classes, s.input_shape) == (10, (1, 28, 28))
    assert (len(s.private_y), len(s.public_y), len(s.test_y)) == (20, 10, 10)
    assert np.array_equal(s.test_y, arrays["t10k-labels-idx1-ubyte"])  # official order kept
    expected = (arrays["t10k-images-idx3-ubyte"][0] / 255.0 - mean) / std
    np.testing.assert_allclose(s.test_x[0, 0], expected, rtol=1e-5, atol=1e-5)
    assert np.array_equal(np.bincount(s.public_y), np.ones(10, int))  # stratified: 1 per label


def test_read_idx_rejects_bad_files(tmp_path):
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(DataError, match="not an IDX file"):
        data.read_idx(bad_magic)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x02" + struct.pack(">II", 4, 4) + b"\x00" * 10)
    with pytest.raises(DataError, match=r"shape \(4, 4\) \(16 bytes\) but holds 10"):
        data.read_idx(short)


def test_missing_mnist_files_say_what_is_expected(tmp_path, monkeypatch):
    with pytest.raises(DataError) as info:
        load_splits("mnist", data_dir=str(tmp_path))
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and "MNIST" in message and "--download" in message
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails, as it does here
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(DataError, match="--download needs torchvision and internet"):
        load_splits("fashion-mnist", data_dir=str(tmp_path), download=True)


def _write_cifar_batch(path, images: np.ndarray, labels: np.ndarray) -> None:
    batch = {b"batch_label": b"fake", b"data": images.reshape(len(images), 3072),
             b"labels": labels.tolist()}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def test_cifar_reader_loads_tiny_batches(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):  # 5 batches x 6 images = 30 training images, 3 per label
        images = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
        _write_cifar_batch(folder / f"data_batch_{i}", images, np.arange(6) + (i % 2) * 4)
    test_images = rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    _write_cifar_batch(folder / "test_batch", test_images, np.arange(10))
    s = load_splits("cifar10", data_dir=str(tmp_path), num_clients=2, num_public=10,
                    partition="iid")
    assert (s.num_classes, s.input_shape) == (10, (3, 32, 32))
    assert (len(s.private_y), len(s.public_y), len(s.test_y)) == (20, 10, 10)
    assert np.array_equal(s.test_y, np.arange(10))
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    expected = (test_images[3] / 255.0 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(s.test_x[3], expected, rtol=1e-5, atol=1e-5)


def test_missing_cifar_batches_say_what_is_expected(tmp_path):
    with pytest.raises(DataError) as info:
        load_splits("cifar10", data_dir=str(tmp_path))
    message = str(info.value)
    assert "data_batch_1" in message and "cifar-10-batches-py" in message
    assert "--download" in message


class _Hostile:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_reader_refuses_pickles_that_call_functions(tmp_path):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": _Hostile(), b"labels": [0]}, f)
    with pytest.raises(DataError, match="not allowed in a CIFAR batch"):
        data.read_cifar_batch(path)


def test_digits_read_without_sklearn_equal_load_digits_and_the_fallback(monkeypatch):
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from fedkd.data import builtin

    bunch = load_digits()
    assert builtin._digits_table() is not None  # the file path runs here, not the fallback
    x, y, test, classes = builtin._load_digits()
    assert np.array_equal(x, (bunch.images / 16.0).astype(np.float32)[:, None]) and x.dtype == np.float32
    assert np.array_equal(y, bunch.target) and y.dtype == np.int64 and test is None and classes == 10
    # the fallback, for a scikit-learn release that moves the file, gives the same arrays
    monkeypatch.setattr(builtin, "_digits_table", lambda: None)
    x2, y2, _, _ = builtin._load_digits()
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    # and the file path does not import scikit-learn (seconds in every process that loads splits)
    code = "import sys; from fedkd.data import builtin; builtin._load_digits(); print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
