"""The server's speed settings: the torch threads its distillation runs on (`server-threads`), and
that they are set only while the server works. Figures are in simulations/server_speed.py, not here."""

import pytest
import torch

from fedkd import distill
from fedkd.apps.server_app import server_threads
from fedkd.config import Config, ConfigError
from fedkd.simulation import simulate

TINY = dict(num_clients=3, rounds=1, local_epochs=1, digest_epochs=1, distill_epochs=2, num_public=100,
            aggregation="plain", device="cpu")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _server_threads_seen(monkeypatch, tmp_path, **settings) -> list[int]:
    """torch's thread count inside each of the server's distillations of a tiny in-process run."""
    seen: list[int] = []
    real = distill.distill

    def spy(model, x, teacher, schedule, **kwargs):
        if schedule.phase.startswith("server distillation"):
            seen.append(torch.get_num_threads())
        return real(model, x, teacher, schedule, **kwargs)

    monkeypatch.setattr(distill, "distill", spy)
    simulate(Config(**TINY, **settings, out=str(tmp_path)).validated())
    return seen


def test_server_distils_on_server_threads_and_gives_the_caller_its_own_back(monkeypatch, tmp_path, two_threads):
    assert _server_threads_seen(monkeypatch, tmp_path, server_threads=1) == [1]
    assert torch.get_num_threads() == 2  # the caller's setting, not the server's, after the run


def test_server_threads_0_keeps_torchs_setting(monkeypatch, tmp_path, two_threads):
    # the ClientApp sets its own threads (client-cpus 1) during training; the server's come back after it
    assert _server_threads_seen(monkeypatch, tmp_path, server_threads=0) == [2]


def test_central_runs_on_server_threads(two_threads, tmp_path):
    seen: list[int] = []
    real = distill.train_supervised

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distill, "train_supervised", spy)
        simulate(Config(**TINY, method="central", server_threads=1, out=str(tmp_path)).validated())
    assert seen == [1] and torch.get_num_threads() == 2


def test_server_threads_context_restores_after_an_error(two_threads):
    with pytest.raises(RuntimeError):
        with server_threads(Config(server_threads=1)):
            assert torch.get_num_threads() == 1
            raise RuntimeError("the round failed")
    assert torch.get_num_threads() == 2


def test_negative_server_threads_is_named():
    with pytest.raises(ConfigError, match="server-threads=-1 is too small; it must be >= 0"):
        Config.from_run_config({"server-threads": -1})
