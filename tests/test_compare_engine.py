"""simulations/compare_methods.py's in-process engine runs the Flower apps' work without Flower;
its figures stand for Flower runs only if the two agree. One small setting, both ways."""

import sys
from pathlib import Path

import pytest

from fedkd.simulation import simulate
from fedkd.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))
import compare_methods  # noqa: E402

SMALL = dict(num_clients=3, rounds=2, local_epochs=3, distill_epochs=10, num_public=150, alpha=0.3)


@pytest.mark.parametrize("method, extra", [("fd", {}), ("fedavg", {}), ("fd", {"public_views": 1, "view_flip": False}),
                                           # the ClientApp starts its CNN teacher from the server's CNN student:
                                           # with it off, in process, this setting ends at student 0.738 and
                                           # ensemble 0.866, against 0.630 and 0.763 with it
                                           ("fd", {"teacher_models": "mlp,cnn"})],
                         ids=["fd", "fedavg", "fd-views", "fd-mixed"])
def test_in_process_engine_matches_a_flower_simulation(tmp_path, method, extra):
    cfg = Config(**SMALL, **extra, method=method, aggregation="plain", out=str(tmp_path / "flower"))
    flower = simulate(cfg)["rounds"][-1]
    inprocess = compare_methods.run_inprocess(cfg.replace(out=str(tmp_path / "inprocess")))
    assert inprocess["student_accuracy"] == pytest.approx(flower["student_accuracy"], abs=0.02)
    if method == "fd":
        assert inprocess["ensemble_accuracy"] == pytest.approx(flower["ensemble_accuracy"], abs=0.02)
        assert inprocess["upload_bytes_per_client"] == flower["upload_bytes_per_client"]
        assert inprocess["teacher_accuracy_mean"] == pytest.approx(flower["teacher_accuracy_mean"], abs=0.02)
        assert inprocess["prototype_accuracy"] == flower["prototype_accuracy"] or (
            inprocess["prototype_accuracy"].keys() == flower["prototype_accuracy"].keys()
            and all(abs(inprocess["prototype_accuracy"][k] - flower["prototype_accuracy"][k]) <= 0.02
                    for k in flower["prototype_accuracy"]))


def test_secure_upload_counts_every_stage():
    cfg = Config(num_clients=4, num_public=100)
    from fedkd import task

    layout = task.vector_layout(cfg, task.splits_for(cfg), 1)
    upload = compare_methods.secure_upload(cfg)
    masked = layout.length * cfg.ring_bits / 8
    assert masked < upload < masked + 4000  # the masked vector plus keys, shares and signatures


@pytest.mark.parametrize("argv", [["--main-variants", "fd", "fedav"], ["--skews", "dirichlet 1"],
                                  ["--ablation-variants", "fd clip-norm 1"]])
def test_an_unknown_label_is_refused_before_any_run(tmp_path, capsys, argv):
    # a label that names no row used to run nothing for it, silently
    assert compare_methods.main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown" in err and argv[-1] in err and "choose from" in err
    assert list(tmp_path.iterdir()) == []


def test_a_single_architecture_reference_row_is_left_out_where_it_is_the_default():
    # digits (8x8) default to MLP teachers, so "fd teachers mlp" would repeat the default row there
    assert compare_methods.repeats_default({"teacher_models": "mlp"}, "digits")
    assert not compare_methods.repeats_default({"teacher_models": "cnn"}, "digits")
    assert not compare_methods.repeats_default({"clip_norm": 0.0}, "digits")
