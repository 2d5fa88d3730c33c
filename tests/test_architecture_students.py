"""architecture-students (FedDF's per-architecture global models): which architectures get one, that
a teacher starts from its own architecture's student, that the server distils each from the same
ensemble, and that the weights travel down in the train message."""

import numpy as np
import pytest
import torch

from fedkd import distill, task
from fedkd.config import Config
from fedkd.server import ClientReply, DistillationServer

# digits: the student (auto) is an MLP, so under "mlp,cnn" the odd clients' CNNs are the other architecture
TINY = dict(num_clients=4, local_epochs=2, digest_epochs=1, distill_epochs=3, num_public=120, device="cpu")


@pytest.mark.parametrize("options, expected", [
    ({}, ()),  # one architecture: the student is theirs
    ({"teacher_models": "mlp,cnn"}, ("cnn",)),
    ({"teacher_models": "auto,cnn,mlp"}, ("cnn",)),  # auto is the student's own (mlp on 8x8 digits)
    ({"teacher_models": "cnn", "student_model": "mlp"}, ("cnn",)),
    ({"teacher_models": "mlp,cnn", "architecture_students": False}, ()),
    ({"teacher_models": "mlp,cnn", "teacher_init": "persist"}, ()),  # teachers start from nothing sent down
    ({"teacher_models": "mlp,cnn", "method": "local"}, ()),
])
def test_only_the_other_architectures_get_a_student_of_their_own(options, expected):
    cfg = Config(**TINY, **options).validated()
    assert task.prototype_architectures(cfg, task.splits_for(cfg)) == expected
    assert tuple(DistillationServer(cfg).prototypes) == expected


def _state(name, seed):
    torch.manual_seed(seed)
    cfg = Config(**TINY)
    splits = task.splits_for(cfg)
    from fedkd.models import build_model

    return build_model(name, splits.input_shape, splits.num_classes).state_dict()


def test_a_teacher_starts_from_its_architectures_student_and_skips_the_digest(monkeypatch):
    cfg = Config(**TINY, teacher_models="mlp,cnn").validated()
    splits = task.splits_for(cfg)
    student, cnn, own_cnn = _state("mlp", 1), _state("cnn", 2), _state("cnn", 3)

    def same(model, state):
        return all(torch.equal(model.state_dict()[k], state[k]) for k in state)

    model, from_student = task.start_teacher(cfg, splits, 0, None, student, {"cnn": cnn})  # client 0: mlp
    assert from_student and same(model, student)
    model, from_student = task.start_teacher(cfg, splits, 1, own_cnn, student, {"cnn": cnn})  # client 1: cnn
    assert from_student and same(model, cnn)
    # none sent down (architecture-students off): the CNN keeps its own weights
    model, from_student = task.start_teacher(cfg, splits, 1, own_cnn, student, None)
    assert not from_student and same(model, own_cnn)

    digests = []
    monkeypatch.setattr(task, "digest", lambda *a, **k: digests.append(1) or 0.0)
    consensus = task.Consensus(np.arange(10), distill.Teacher(np.full((10, 10), 0.1, np.float32), "probs", 3.0))
    task.teacher_round(cfg, 1, 2, own_cnn, consensus, student=student, prototypes={"cnn": cnn})
    assert digests == []  # it starts from a student that has digested the consensus
    task.teacher_round(cfg, 1, 2, own_cnn, consensus, student=student)
    assert digests == [1]  # without one, it digests the consensus itself


def _round(cfg, server, r, states):
    replies = []
    prototypes = {k: {n: v.clone() for n, v in s.items()} for k, s in server.prototype_states().items()}
    student = {n: v.clone() for n, v in server.student.state_dict().items()}
    for pid in range(cfg.num_clients):
        update = task.teacher_round(cfg, pid, r, states.get(pid), server.consensus, student=student,
                                    prototypes=prototypes)
        states[pid] = update.state
        replies.append(ClientReply(pid, update.vector, update.metrics))
    return server.finish_round(r, replies, seconds_clients=0.0)


def test_the_server_distils_each_architectures_student_from_the_same_ensemble(monkeypatch):
    targets, before = {}, {}
    real = distill.distill

    def spy(model, x, teacher, *args, **kwargs):  # each server model's target, and its logits as it came in
        for name, m in [("student", server.student), *server.prototypes.items()]:
            if model is m:
                targets.setdefault(name, []).append(teacher.values.copy())
                before.setdefault(name, []).append(distill.predict_logits(model, x, torch.device("cpu")))
        return real(model, x, teacher, *args, **kwargs)

    monkeypatch.setattr(distill, "distill", spy)
    plain = []
    monkeypatch.setattr(DistillationServer, "_combine", lambda self, *a, _c=DistillationServer._combine:
                        plain.append(_c(self, *a)) or plain[-1])
    cfg = Config(**dict(TINY, local_epochs=5, distill_epochs=20), teacher_models="mlp,cnn").validated()
    server, states = DistillationServer(cfg), {}
    start = {k: v.clone() for k, v in server.prototypes["cnn"].state_dict().items()}
    records = [_round(cfg, server, r, states) for r in (1, 2)]
    public = plain[0::2]  # _combine builds the public teacher, then the test part's
    for name in ("student", "cnn"):
        np.testing.assert_array_equal(targets[name][0], public[0].values)  # round 1: the ensemble itself
        # round 2: the step past the same ensemble, each from its own predictions (step 1.5, auto)
        np.testing.assert_allclose(targets[name][1], distill.extrapolate(public[1], before[name][1], 1.5).values,
                                   atol=1e-6)
    assert np.abs(targets["student"][1] - targets["cnn"][1]).max() > 1e-3  # two models, two steps
    assert any(not torch.equal(v, server.prototypes["cnn"].state_dict()[k]) for k, v in start.items())
    # each round reports the CNN student's accuracy beside the student's; by round 2 it has learnt
    assert all(set(record.prototype_accuracy) == {"cnn"} for record in records)
    assert records[1].prototype_accuracy["cnn"] > 0.3  # chance: 0.1


def test_a_homogeneous_run_reports_no_architecture_student():
    cfg = Config(**TINY).validated()
    server = DistillationServer(cfg)
    assert server.prototype_states() == {}
    assert _round(cfg, server, 1, {}).prototype_accuracy is None


def test_the_train_message_carries_each_architectures_student_down():
    from types import SimpleNamespace

    from fedkd.apps.records import prototypes_from_message, student_from_message, train_content

    cfg = Config(**TINY, teacher_models="mlp,cnn").validated()
    student, cnn = _state("mlp", 1), _state("cnn", 2)
    # the readers touch only the content (a Message needs a running Flower run to be built)
    msg = SimpleNamespace(content=train_content(cfg, 1, None, student=student, prototypes={"cnn": cnn}))
    got = prototypes_from_message(msg)
    assert set(got) == {"cnn"} and all(torch.equal(got["cnn"][k], cnn[k]) for k in cnn)
    assert all(torch.equal(student_from_message(msg)[k], student[k]) for k in student)
    # teacher-init persist: nothing goes down
    persist = Config(**TINY, teacher_models="mlp,cnn", teacher_init="persist").validated()
    msg = SimpleNamespace(content=train_content(persist, 1, None, student=student, prototypes={"cnn": cnn}))
    assert prototypes_from_message(msg) == {} and student_from_message(msg) is None



def test_each_client_downloads_only_the_model_it_starts_from():
    cfg = Config(**TINY, teacher_models="mlp,cnn").validated()
    splits = task.splits_for(cfg)
    student, cnn = _state("mlp", 1), _state("cnn", 2)
    # client 0 is an MLP like the student: the student alone; client 1 a CNN: the CNN student alone
    assert task.starting_weights(cfg, splits, 0, student, {"cnn": cnn}) == (student, {})
    start, own = task.starting_weights(cfg, splits, 1, student, {"cnn": cnn})
    assert start is None and set(own) == {"cnn"} and own["cnn"] is cnn
    # and what it gets is what it would have picked from everything (start_teacher)
    picked, _ = task.start_teacher(cfg, splits, 1, None, start, own)
    every, _ = task.start_teacher(cfg, splits, 1, None, student, {"cnn": cnn})
    assert all(torch.equal(picked.state_dict()[k], every.state_dict()[k]) for k in cnn)
    # no architecture students (off, or one architecture): the student for every client
    assert task.starting_weights(cfg, splits, 1, student, {}) == (student, {})
