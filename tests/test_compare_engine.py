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


@pytest.mark.parametrize("method, extra", [("fd", {}), ("fedavg", {}), ("fd", {"public_views": 1, "view_flip": False})],
                         ids=["fd", "fedavg", "fd-views"])
def test_in_process_engine_matches_a_flower_simulation(tmp_path, method, extra):
    cfg = Config(**SMALL, **extra, method=method, aggregation="plain", out=str(tmp_path / "flower"))
    flower = simulate(cfg)["rounds"][-1]
    inprocess = compare_methods.run_inprocess(cfg.replace(out=str(tmp_path / "inprocess")))
    assert inprocess["student_accuracy"] == pytest.approx(flower["student_accuracy"], abs=0.02)
    if method == "fd":
        assert inprocess["ensemble_accuracy"] == pytest.approx(flower["ensemble_accuracy"], abs=0.02)
        assert inprocess["upload_bytes_per_client"] == flower["upload_bytes_per_client"]


def test_secure_upload_counts_every_stage():
    cfg = Config(num_clients=4, num_public=100)
    from fedkd import task

    layout = task.vector_layout(cfg, task.splits_for(cfg), 1)
    upload = compare_methods.secure_upload(cfg)
    masked = layout.length * cfg.ring_bits / 8
    assert masked < upload < masked + 4000  # the masked vector plus keys, shares and signatures
