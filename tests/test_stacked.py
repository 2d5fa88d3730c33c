"""The stacked cohort engine (`fedkd.stacked`): a node's teachers of one architecture trained as
one vmapped model release what one-after-another training releases (within float rounding), each
client keeping its own streams, divergence guard and failure; what cannot stack falls back and
says why."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from fedkd import distill, optim, stacked, task
from fedkd.config import Config
from fedkd.data.splits import Splits

CPU = torch.device("cpu")
# unequal partitions (alpha 0.3: 2 to 60-odd examples, so some clients take several batches an
# epoch and others one), clipped steps (clip-norm 5 by default), Adam in the digest, SGD locally
@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as a node's ClientApp sets for one core (`client-cpus` 1): tiny models on
    a busy machine spend most of their time waiting on a second thread otherwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(num_clients=4, local_epochs=2, num_public=40, alpha=0.3, digest_epochs=2, batch_size=16)


def _consensus(config: Config, splits) -> task.Consensus:
    """A consensus on the whole public set, as the server would send (random, fixed)."""
    rng = np.random.default_rng(1)
    values = rng.dirichlet(np.ones(splits.num_classes), size=config.num_public).astype(np.float32)
    return task.Consensus(np.arange(config.num_public), distill.Teacher(values, "probs", config.temperature))


def _both(config: Config, server_round: int = 2, consensus=True, starts=None, **kw):
    """cohort_teachers under each engine, from the same starts: (sequential, stacked)."""
    splits = task.splits_for(config)
    cons = _consensus(config, splits) if consensus else None
    starts = starts or {pid: task.ClientStart() for pid in range(config.num_clients)}
    return tuple(task.cohort_teachers(replace(config, cohort_engine=engine), server_round, starts, cons, **kw)
                 for engine in ("sequential", "stacked"))


def _assert_same(seq: dict, st: dict, tol: float = 1e-5, state_rtol: float = 0.0) -> None:
    assert list(seq) == list(st)
    for pid in seq:
        a, b = seq[pid], st[pid]
        assert a.engine == "sequential" and b.engine == "stacked"
        assert list(a.metrics) == list(b.metrics)  # the same keys, in the same order
        assert a.vector.shape == b.vector.shape and len(a.vector) > 0
        assert np.abs(a.vector - b.vector).max() <= tol, pid
        assert a.metrics["train-recoveries"] == b.metrics["train-recoveries"]
        assert a.metrics["train-loss"] == pytest.approx(b.metrics["train-loss"], rel=1e-5)
        assert a.metrics["teacher-accuracy"] == b.metrics["teacher-accuracy"]
        assert a.metrics["stalled"] == b.metrics["stalled"]
        for k in a.state:
            torch.testing.assert_close(a.state[k], b.state[k], rtol=state_rtol, atol=1e-4)


def test_stacked_mlp_teachers_release_what_sequential_ones_do():
    """Digest (teacher-init persist), then local training with the consensus term, clipped."""
    cfg = Config(**TINY, teacher_init="persist").validated()
    assert len({len(p) for p in task.splits_for(cfg).partitions}) == cfg.num_clients  # sizes all differ
    seq, st = _both(cfg)
    _assert_same(seq, st)


def test_stacked_teachers_from_the_student_skip_the_digest_as_sequential_ones_do():
    cfg = Config(**TINY).validated()  # teacher-init student (default)
    splits = task.splits_for(cfg)
    torch.manual_seed(5)
    student = task.build_model(cfg.student_model, splits.input_shape, splits.num_classes).state_dict()
    seq, st = _both(cfg, student=student)
    assert all(u.from_student for u in st.values())
    _assert_same(seq, st)


def test_stacked_cnn_teachers_release_what_sequential_ones_do():
    """cohort-engine stacked stacks convolutions on a CPU too (auto would not: slower there)."""
    cfg = Config(**dict(TINY, local_epochs=1, digest_epochs=1), teacher_models="cnn", teacher_init="persist",
                 ensemble="logits", vote_weighting="none").validated()  # the logit-matching term too
    seq, st = _both(cfg)
    _assert_same(seq, st)


def test_round_one_without_consensus_and_in_chunks_of_one_is_the_same(monkeypatch):
    cfg = Config(**TINY).validated()
    seq, st = _both(cfg, server_round=1, consensus=False)
    _assert_same(seq, st)
    monkeypatch.setattr(stacked, "CPU_BUDGET_BYTES", 1)  # a chunk of one client at a time
    assert stacked.chunk_size(task.initial_teacher(cfg, task.splits_for(cfg), 0), (1, 8, 8), 16, 1) == 1
    _, chunked = _both(cfg, server_round=1, consensus=False)
    _assert_same(seq, chunked)  # a client's result does not depend on which clients share its chunk


def test_a_client_that_diverges_restarts_alone(monkeypatch):
    """Client 1's inputs are scaled by 1e6 (unclipped steps overflow): it restarts at half the
    rate, twice, while the others go on; every client ends as sequential training leaves it."""
    real = Splits.client

    def scaled(self, cid):
        x, y = real(self, cid)
        return (x * 1e6 if cid == 1 else x), y

    monkeypatch.setattr(Splits, "client", scaled)
    cfg = Config(**dict(TINY, digest_epochs=0), clip_norm=0.0).validated()
    seq, st = _both(cfg, server_round=1, consensus=False)
    assert [u.metrics["train-recoveries"] for u in seq.values()] == [0.0, 2.0, 0.0, 0.0]
    _assert_same(seq, st, state_rtol=1e-5)  # client 1 keeps some weights of order 1e24: compared relatively


def test_a_client_that_keeps_diverging_fails_alone(monkeypatch):
    """Client 1's partition is poisoned (NaN inputs): it fails with the sequential loop's error
    after MAX_RECOVERIES restarts; the others are what sequential training gives them."""
    real = Splits.client

    def poisoned(self, cid):
        x, y = real(self, cid)
        return (np.full_like(x, np.nan) if cid == 1 else x), y

    monkeypatch.setattr(Splits, "client", poisoned)
    cfg = Config(**TINY, teacher_init="persist").validated()
    seq, st = _both(cfg)
    assert isinstance(st[1], distill.DivergedError) and str(st[1]) == str(seq[1])
    assert "client 1's local training diverged" in str(st[1])
    _assert_same({p: u for p, u in seq.items() if p != 1}, {p: u for p, u in st.items() if p != 1})


def test_dp_sgd_batch_norm_a_lone_client_and_cpu_convolutions_fall_back_and_say_so():
    dp = Config(**TINY, teacher_dp_noise_multiplier=1.0, consensus_weight=0.0, cohort_engine="auto").validated()
    assert task.cohort_engine(dp, task.splits_for(dp)).startswith("sequential (DP-SGD teachers")
    assert Config().cohort_engine == "sequential"  # the default: bit for bit the same whatever the grouping
    mixed = Config(**dict(TINY, num_clients=5), teacher_models="mlp,cnn,resnet8", cohort_engine="auto").validated()
    splits = task.splits_for(mixed)
    p = stacked.plan(mixed, splits.input_shape, splits.num_classes, range(5), CPU)
    assert p.stacked == ((0, 3),)  # mlp; cnn (1, 4) runs faster one at a time on a CPU; resnet8 (2) alone
    assert "convolutions" in p.reasons[1] and "batch-norm" in p.reasons[2]
    forced = stacked.plan(replace(mixed, cohort_engine="stacked"), splits.input_shape, splits.num_classes,
                          range(5), CPU)
    assert forced.stacked == ((0, 3), (1, 4)) and forced.sequential == (2,)
    lone = stacked.plan(mixed, splits.input_shape, splits.num_classes, [0, 1], CPU)
    assert lone.stacked == () and "only mlp client" in lone.reasons[0]
    assert stacked.plan(replace(mixed, cohort_engine="sequential"), splits.input_shape, splits.num_classes,
                        range(5), CPU).stacked == ()
    # mixed architectures in one node's round: the mlp clients stack, the others say sequential
    out = task.cohort_teachers(replace(mixed, local_epochs=1), 1, {pid: task.ClientStart() for pid in range(5)})
    assert {pid: u.engine for pid, u in out.items()} == {0: "stacked", 1: "sequential", 2: "sequential",
                                                         3: "stacked", 4: "sequential"}


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_the_stacked_optimizer_steps_as_fedkd_optim_does_per_slot(name):
    """Three slots, five steps; slot 1 sits out step 2 and slot 2 restarts at half the rate
    before step 3: each slot equals its own fedkd.optim optimizer, which saw only its own steps."""
    gen = torch.Generator().manual_seed(0)
    stacked_p = torch.randn(3, 4, 5, generator=gen, dtype=torch.float32)
    singles = [stacked_p[i].clone().requires_grad_(True) for i in range(3)]
    stacked_p.requires_grad_(True)
    opt = stacked.StackedOptimizer(name, [stacked_p], 0.1)
    own = [distill.make_optimizer(name, [p], 0.1) for p in singles]
    for step in range(5):
        grad = torch.randn(3, 4, 5, generator=gen)
        active = torch.tensor([True, step != 2, True])
        if step == 3:
            opt.reset(2, 0.05)
            own[2] = distill.make_optimizer(name, [singles[2]], 0.05)
        stacked_p.grad = grad.clone()
        opt.step(active)
        for i, p in enumerate(singles):
            if active[i]:
                p.grad = grad[i].clone()
                own[i].step()
    assert isinstance(own[0], (optim.SGD, optim.Adam))
    for i, p in enumerate(singles):
        torch.testing.assert_close(stacked_p[i].detach(), p.detach(), rtol=0, atol=1e-6)


def test_a_simulated_run_gives_the_same_rounds_under_either_engine(tmp_path):
    from fedkd.simulation import simulate

    rounds = {}
    for engine in ("sequential", "stacked"):
        cfg = Config(num_clients=4, rounds=2, local_epochs=2, digest_epochs=1, distill_epochs=5, num_public=100,
                     aggregation="plain", cohort_engine=engine, out=str(tmp_path / engine)).validated()
        simulate(cfg)
        rounds[engine] = json.loads((tmp_path / engine / "results.json").read_text())["rounds"]
    assert len(rounds["stacked"]) == 2
    for a, b in zip(rounds["sequential"], rounds["stacked"]):
        keys = [k for k in a if "accuracy" in k and isinstance(a[k], float)]
        assert "student_accuracy" in keys
        for k in keys:
            assert a[k] == pytest.approx(b[k], abs=1e-5), k


def test_config_json_says_which_engine_trains_the_teachers():
    from fedkd.results import resolved_settings
    from fedkd.task import splits_for

    def engine(**settings):
        cfg = Config(**settings).validated()
        return resolved_settings(cfg, splits_for(cfg)).get("cohort_engine")

    assert engine() == "sequential (cohort-engine sequential)"  # the default
    assert engine(cohort_engine="stacked") == "stacked" == engine(cohort_engine="auto")  # digits' MLPs stack
    assert engine(cohort_engine="auto", teacher_dp_noise_multiplier=1.0).startswith("sequential (DP-SGD")
    assert engine(method="fedavg") is None  # no teachers
