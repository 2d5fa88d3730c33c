"""simulations/compare_methods.py: its runs go through the package's engine, its upload figure
counts every stage, and a label it does not know is refused."""

import sys
from pathlib import Path

import pytest

from fedkd.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))
import compare_methods  # noqa: E402

SMALL = dict(num_clients=3, rounds=2, local_epochs=3, distill_epochs=10, num_public=150, alpha=0.3)


def test_a_run_goes_through_the_package_engine(tmp_path, monkeypatch):
    """compare_methods has no engine of its own: each run is `fedkd.simulation.simulate`."""
    import fedkd.simulation

    calls = []
    real = fedkd.simulation.simulate
    monkeypatch.setattr(fedkd.simulation, "simulate", lambda cfg, **kw: calls.append(cfg) or real(cfg, **kw))
    record = compare_methods.run_one(Config(**SMALL, aggregation="plain", out=str(tmp_path)))
    assert [c.out for c in calls] == [str(tmp_path)] and record["round"] == 2 and record["student_accuracy"] > 0.3


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
