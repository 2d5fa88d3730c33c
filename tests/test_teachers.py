"""A node keeps its clients' teachers in memory up to teacher-memory, each past it on disk: the
weights round-trip bit for bit, a run's results do not depend on where they were kept, the files
are private and checked on reading, and a node's state holds no teacher past the budget."""

import os
import stat

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedkd.apps.teachers import IN_MEMORY, ON_DISK, TeacherStore
from fedkd.config import Config, ConfigError
from fedkd.models import build_model
from fedkd.simulation import simulate


def _weights(seed: int) -> dict:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build_model("mlp", (1, 8, 8), 10).state_dict().items()}


def _nbytes(weights: dict) -> int:
    return sum(t.numel() * t.element_size() for t in weights.values())


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_teachers_stay_in_memory_up_to_the_budget_then_go_to_disk_bit_for_bit(tmp_path):
    one = _nbytes(_weights(0))
    state = RecordDict()
    store = TeacherStore(state, budget=int(2.5 * one), folder=lambda: tmp_path)  # (serialised arrays carry headers)
    kept = {pid: _weights(pid) for pid in range(4)}
    places = [store.put(pid, w) for pid, w in kept.items()]
    assert places == ["memory", "memory", "disk", "disk"]
    in_memory = {k for k in state.keys() if k.startswith(IN_MEMORY + "@")}
    assert in_memory == {"teacher@0", "teacher@1"}
    for pid, w in kept.items():
        assert _same(store.get(pid), w), pid
    assert store.get(9) is None
    # a teacher replaced keeps its place's accounting: client 1's new weights still fit in memory
    assert store.put(1, _weights(11)) == "memory"
    assert _same(store.get(1), _weights(11))


def test_a_teacher_file_is_private_checked_on_reading_and_removed_when_dropped(tmp_path):
    state = RecordDict()
    store = TeacherStore(state, budget=0, folder=lambda: tmp_path)
    assert store.put(3, _weights(3)) == "disk"
    path = tmp_path / "teacher-3.npz"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # one flipped byte in the saved weights
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="was changed since this node wrote it"):
        store.get(3)
    path.unlink()
    with pytest.raises(RuntimeError, match="cannot be read"):
        store.get(3)
    store.put(3, _weights(3))
    assert path.exists()
    store.drop(3)
    assert not path.exists() and f"{ON_DISK}@3" not in state.keys()


def test_the_budget_is_checked():
    with pytest.raises(ConfigError, match="teacher-memory"):
        Config(teacher_memory=-1).validated()


SMALL = dict(num_clients=4, rounds=2, local_epochs=2, digest_epochs=1, distill_epochs=5, num_public=100,
             aggregation="plain", teacher_init="persist", num_nodes=2)


def _rows(results: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in results["rounds"]]


def test_a_run_is_the_same_with_teachers_on_disk_and_a_node_keeps_none_in_memory(tmp_path, inprocess_grids):
    grids = inprocess_grids
    runs, names = {}, {}
    for label, budget in (("memory", 1024.0), ("disk", 0.0)):
        grids.clear()
        cfg = Config(**SMALL, teacher_memory=budget, teacher_dir=str(tmp_path / "teachers"),
                     out=str(tmp_path / label))
        results = simulate(cfg)
        assert results["status"] == "completed", label
        runs[label] = _rows(results)
        names[label] = {key.partition("@")[0] for g in grids for ctx in g.nodes.values() for key in ctx.state.keys()}
    assert runs["disk"] == runs["memory"]
    assert names["memory"] == {IN_MEMORY, "released"}
    assert names["disk"] == {ON_DISK, "released"}  # every teacher on disk, none in the nodes' state
    files = sorted(p.name for p in (tmp_path / "teachers").rglob("teacher-*.npz"))
    assert files == [f"teacher-{pid}.npz" for pid in range(4)]
    assert np.isfinite(runs["disk"][-1]["student_accuracy"])
