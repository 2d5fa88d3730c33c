"""Augmented views of the public inputs (fedkd.data.views, public-views): each view is its
example shifted (and mirrored) with the background shifted in; clients and server derive the
same rows from the seed; auto picks views only where they fit; the count reaches the upload
layout and the DP accounting."""

import numpy as np
import pytest

from fedkd import task
from fedkd.config import AUTO_VIEWS, Config
from fedkd.data.views import max_shift, views
from fedkd.errors import ConfigError


def _shifted(img, dy, dx, flip, background):
    """img (C, H, W) mirrored (if flip), then moved dy rows down and dx columns right."""
    src = img[..., ::-1] if flip else img
    out = np.broadcast_to(background[:, None, None], img.shape).copy()
    h, w = img.shape[1:]
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[:, i + dy, j + dx] = src[:, i, j]
    return out


def test_every_view_is_its_example_shifted_and_mirrored_with_the_background_shifted_in():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 2, 28, 28)).astype(np.float32)
    background = x.min(axis=(0, 2, 3))
    v = views(x, 3, flip=True, seed=7)
    assert v.shape == (15, 2, 28, 28)
    s = max_shift(x.shape[1:])
    assert s == 2
    seen = set()
    for row in range(15):
        source = x[row % 5]  # view j of example i is row j * m + i
        matches = [(dy, dx, f) for dy in range(-s, s + 1) for dx in range(-s, s + 1) for f in (False, True)
                   if np.array_equal(v[row], _shifted(source, dy, dx, f, background))]
        assert matches, f"row {row} is no shift of example {row % 5}"
        seen.update(matches)
    assert len(seen) > 3  # the shifts and flips vary (the control: a constant transform would match once)


def test_views_are_a_function_of_the_seed():
    x = np.random.default_rng(1).normal(size=(4, 1, 16, 16)).astype(np.float32)
    assert np.array_equal(views(x, 2, flip=True, seed=3), views(x, 2, flip=True, seed=3))
    assert not np.array_equal(views(x, 2, flip=True, seed=3), views(x, 2, flip=True, seed=4))
    assert views(x, 0, flip=True, seed=3).shape == (0, 1, 16, 16)
    with pytest.raises(ValueError, match="images"):
        views(x.reshape(4, -1), 1, flip=False, seed=0)


def test_auto_views_only_on_images_big_enough_and_never_under_distributed_dp():
    cfg = Config()
    assert cfg.views_for((1, 28, 28)) == cfg.views_for((3, 32, 32)) == AUTO_VIEWS
    assert cfg.views_for((1, 8, 8)) == 0  # digits: a 1-pixel shift moves an eighth of the image
    assert cfg.views_for((64,)) == 0  # feature vectors: no pixels to shift
    dp = Config(dp_clip=2.0, dp_noise_multiplier=1.0)
    assert dp.views_for((1, 28, 28)) == 0  # every view would be one more query paid in epsilon
    assert Config(public_views=2).views_for((1, 8, 8)) == 2
    with pytest.raises(ConfigError, match="needs image inputs"):
        Config(public_views=1).views_for((64,))
    with pytest.raises(ConfigError, match="public-views"):
        Config(public_views=-2).validated()


def test_client_and_server_derive_the_same_rows_and_the_layout_counts_them():
    cfg = Config(num_public=60, public_views=2, view_flip=False, seed=5).validated()
    splits = task.splits_for(cfg)
    first = task.public_inputs(cfg, splits, 1)
    assert first.shape == (180, *splits.input_shape)
    assert np.array_equal(first[:60], splits.public_x)  # the sample itself comes first
    assert np.array_equal(first, task.public_inputs(cfg, splits, 1))  # the other party's copy
    assert not np.array_equal(first[60:], task.public_inputs(cfg, splits, 2)[60:])  # fresh views each round
    layout = task.vector_layout(cfg, splits, 1)
    assert layout.public == task.query_rows(cfg, 1, splits.input_shape) == 180


def test_distributed_dp_counts_every_view_as_a_query():
    base = dict(num_public=60, dp_clip=2.0, dp_noise_multiplier=1.0)
    plain = task.dp_params(Config(**base).validated(), 10, 1)
    viewed = task.dp_params(Config(**base, public_views=2).validated(), 10, 1)
    assert plain.dim == 60 * 10 and viewed.dim == 3 * 60 * 10


def test_views_on_feature_vectors_are_refused_in_one_line_before_anything_runs(tmp_path, capsys):
    from fedkd.cli import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "table.npz", x=rng.normal(size=(900, 12)).astype(np.float32), y=np.arange(900) % 10)
    assert main(["run", "--dataset", str(tmp_path / "table.npz"), "--public-views", "2",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedkd: error: ") and "public-views=2 needs image inputs" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
    assert main(["run", "--public-views", "-2", "--out", str(tmp_path / "out")]) == 2
    assert "public-views=-2" in capsys.readouterr().err


def test_another_process_derives_the_same_views():
    # client and server are different processes (Ray actors, SuperNodes): the rows must not depend
    # on anything process-local, such as Python's per-process hash seed
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import hashlib; from fedkd import task; from fedkd.config import Config; "
            "cfg = Config(num_public=60, public_views=2, seed=5).validated(); "
            "print(hashlib.sha256(task.public_inputs(cfg, task.splits_for(cfg), 3).tobytes()).hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    theirs = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    cfg = Config(num_public=60, public_views=2, seed=5).validated()
    mine = hashlib.sha256(task.public_inputs(cfg, task.splits_for(cfg), 3).tobytes()).hexdigest()
    assert theirs.stdout.strip() == mine


def test_validation_holds_out_whole_examples_with_every_view():
    import torch

    from fedkd.distill import _holdout

    groups = np.tile(np.arange(200), 4)  # 200 examples, each with 3 views after it
    val, train = _holdout(len(groups), 0.1, torch.Generator().manual_seed(0), groups)
    held = set(groups[val.numpy()])
    assert len(held) == 20 and len(val) == 80  # 10% of the examples, each with all 4 rows
    assert held.isdisjoint(groups[train.numpy()])  # no view of a held-out example trains
    assert len(val) + len(train) == len(groups)
    # the control: a slice of rows, as without groups, leaves views of held-out examples in training
    rows_val, rows_train = _holdout(len(groups), 0.1, torch.Generator().manual_seed(0), None)
    assert not set(groups[rows_val.numpy()]).isdisjoint(groups[rows_train.numpy()])


def test_the_server_distils_on_the_sample_and_its_views_and_sends_down_the_sample_alone(monkeypatch):
    from fedkd import distill, server as server_module
    from fedkd.rounds import RoundRecord

    cfg = Config(num_public=60, public_views=2, public_labels=True, hard_label_weight=0.5, seed=2).validated()
    srv = server_module.DistillationServer(cfg)
    seen = {}

    def fake_distill(model, x, teacher, schedule, **kw):
        seen.update(x=x, teacher=teacher, **kw)
        return {"epochs": 1.0, "recoveries": 0.0}

    monkeypatch.setattr(server_module.distill, "distill", fake_distill)
    values = np.random.default_rng(0).dirichlet(np.ones(10), size=180).astype(np.float32)
    srv._distil(RoundRecord(1), distill.Teacher(values, "probs", 3.0))
    splits = srv.splits
    assert np.array_equal(seen["x"], task.public_inputs(cfg, splits, 1))  # what the clients labelled
    assert np.array_equal(seen["labels"], np.tile(splits.public_y, 3))  # a view has its example's label
    assert np.array_equal(seen["groups"], np.tile(np.arange(60), 3))
    assert np.array_equal(srv.consensus.teacher.values, values[:60]) and len(srv.consensus.indices) == 60
