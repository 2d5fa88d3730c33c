"""`fedkd run --resume DIR`: a run stopped after a finished round and resumed gives the rounds an
uninterrupted run gives (same seed, in-process engine), its privacy accounting included; a DP
release opened before the stop is counted on resume; a run that cannot be continued as the same
run is refused in one line (exit 2) and its folder is left as it was."""

import json
import shutil

import pytest
import torch

from fedkd.cli import main
from fedkd.config import Config
from fedkd.results import CHECKPOINT, read_checkpoint
from fedkd.simulation import simulate

TINY = {"num_clients": 3, "rounds": 3, "local_epochs": 1, "distill_epochs": 2, "num_public": 100}


def _stopped(config: Config, phase: str) -> None:
    """Run `config` and stop it (as Ctrl-C does) when the run reports `phase`: a chosen point, not a timer."""
    def on_phase(text: str) -> None:
        if text.startswith(phase):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(config, on_phase=on_phase)


def _without_times(value):
    """A results.json value without its wall-clock figures (every key naming seconds)."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def _saved(folder) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.mark.parametrize("options", [
    {},  # fd with secure aggregation: the student, the consensus sent down next round
    {"aggregation": "plain", "teacher_models": "mlp,cnn"},  # and each architecture's own student
    {"method": "fedavg"},
], ids=["fd-secagg", "architecture-students", "fedavg"])
def test_a_run_stopped_after_round_2_and_resumed_gives_the_uninterrupted_rounds(tmp_path, options):
    whole = simulate(Config(**TINY, **options, out=str(tmp_path / "whole")))
    out = tmp_path / "stopped"
    _stopped(Config(**TINY, **options, out=str(out)), "round 3:")
    assert [r["round"] for r in _saved(out)["rounds"]] == [1, 2] and read_checkpoint(out).round == 2

    assert main(["run", "--resume", str(out)]) == 0
    resumed = _saved(out)
    assert resumed["status"] == "completed" and [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    assert [r["student_accuracy"] for r in resumed["rounds"]] == [r["student_accuracy"] for r in whole["rounds"]]
    assert _without_times(resumed["rounds"]) == _without_times(whole["rounds"])  # every figure, not only accuracy
    assert _without_times(resumed["final"]) == _without_times(whole["final"])
    weights, expected = torch.load(out / "student.pt"), torch.load(tmp_path / "whole" / "student.pt")
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert not (out / CHECKPOINT).exists()  # a finished run has nothing to resume
    environment = json.loads((out / "config.json").read_text())["environment"]
    assert [entry["after_round"] for entry in environment["resumed"]] == [2]
    assert (out / "summary.txt").is_file() and (out / "rounds.csv").read_text().count("\n") == 4


DP = {**TINY, "vote_weighting": "none", "dp_clip": 1.0, "dp_noise_multiplier": 1.0}


def test_resumed_privacy_accounting_continues_the_ledger(tmp_path):
    """DP noise comes from the OS, so accuracies differ from run to run; the epsilon spent does not."""
    whole = simulate(Config(**DP, out=str(tmp_path / "whole")))
    out = tmp_path / "stopped"
    _stopped(Config(**DP, out=str(out)), "round 3:")
    assert main(["run", "--resume", str(out)]) == 0
    resumed = _saved(out)
    assert [r["privacy"]["epsilon"] for r in resumed["rounds"]] == [r["privacy"]["epsilon"] for r in whole["rounds"]]
    assert resumed["privacy"] == whole["privacy"] and resumed["privacy"]["rounds_released"] == 3


def test_a_dp_sum_opened_before_the_stop_is_spent_on_resume(tmp_path):
    """Stopped as round 3's unmask stage starts, the server may have seen that round's noisy sum:
    the resumed run counts it (with the fewest honest clients the noise allows) besides its own round 3."""
    whole = simulate(Config(**DP, out=str(tmp_path / "whole")))
    out = tmp_path / "stopped"
    _stopped(Config(**DP, out=str(out)), "round 3: secure sum, unmask")
    assert read_checkpoint(out).opened == 3
    assert main(["run", "--resume", str(out)]) == 0
    resumed = _saved(out)
    assert resumed["privacy"]["rounds_released"] == 4
    assert resumed["privacy"]["epsilon"] > whole["privacy"]["epsilon"]
    assert [r["privacy"]["epsilon"] for r in resumed["rounds"][:2]] == \
        [r["privacy"]["epsilon"] for r in whole["rounds"][:2]]


# ---- what is refused ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A plain fd run of 2 rounds stopped in round 2: its folder holds round 1 and its checkpoint."""
    out = tmp_path_factory.mktemp("resume") / "run"
    _stopped(Config(**{**TINY, "rounds": 2}, aggregation="plain", out=str(out)), "round 2:")
    return out


def _refused(argv, capsys, folder) -> str:
    before = {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedkd: error: ") and err.count("\n") == 1 and "Traceback" not in err
    after = {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}
    assert after == before  # nothing started, nothing written
    return err


def _copy(stopped_run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(stopped_run, folder)
    return folder


def test_an_option_that_differs_from_the_runs_settings_is_refused(stopped_run, capsys):
    err = _refused(["--resume", str(stopped_run), "--rounds", "5"], capsys, stopped_run)
    assert "rounds 5 differs from its rounds 2; leave the option out" in err
    err = _refused(["--resume", str(stopped_run), "--out", "elsewhere"], capsys, stopped_run)
    assert "leave out --out" in err
    err = _refused(["--resume", str(stopped_run), "--force"], capsys, stopped_run)
    assert "--force" in err


def test_a_folder_without_a_resumable_run_is_refused(stopped_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no fedkd run there" in _refused(["--resume", str(empty)], capsys, empty)

    finished = _copy(stopped_run, tmp_path / "finished")
    saved = _saved(finished)
    (finished / "results.json").write_text(json.dumps({**saved, "status": "completed"}))
    assert "that run is finished (status completed)" in _refused(["--resume", str(finished)], capsys, finished)

    no_checkpoint = _copy(stopped_run, tmp_path / "none")
    (no_checkpoint / CHECKPOINT).unlink()
    assert "no checkpoint.pt there" in _refused(["--resume", str(no_checkpoint)], capsys, no_checkpoint)


def test_a_checkpoint_of_another_layout_or_changed_data_is_refused(stopped_run, tmp_path, capsys):
    other = _copy(stopped_run, tmp_path / "layout")
    payload = torch.load(other / CHECKPOINT, weights_only=True)
    torch.save({**payload, "format": 0, "fedkd": "0.0.1"}, other / CHECKPOINT)
    err = _refused(["--resume", str(other)], capsys, other)
    assert "has layout 0 (fedkd 0.0.1)" in err and "resume it with the fedkd that ran it" in err

    changed = _copy(stopped_run, tmp_path / "data")
    config = json.loads((changed / "config.json").read_text())
    config["resolved"]["num_public"] += 1  # as if the dataset file had changed under the run
    (changed / "config.json").write_text(json.dumps(config))
    assert "the data or fedkd changed since that run started (its num_public differs)" in \
        _refused(["--resume", str(changed)], capsys, changed)


def test_a_run_whose_nodes_keep_state_is_refused_with_the_reason(tmp_path, capsys):
    out = tmp_path / "persist"
    _stopped(Config(**{**TINY, "rounds": 2}, aggregation="plain", teacher_init="persist", out=str(out)), "round 2:")
    err = _refused(["--resume", str(out)], capsys, out)
    assert "cannot be resumed: teacher-init persist keeps each teacher on its node" in err


@pytest.mark.parametrize("options, reason", [
    ({}, None),
    ({"method": "fedavg", "teacher_init": "persist"}, None),  # FedAvg's clients start from the global model
    ({"teacher_models": "mlp,cnn"}, None),  # the cnn teachers start from the cnn student
    ({"teacher_models": "mlp,cnn", "architecture_students": False}, "cnn teachers have no global student"),
    ({"teacher_dp_noise_multiplier": 1.0}, "DP-SGD teachers"),
    ({"teacher_init": "persist"}, "teacher-init persist"),
])
def test_what_nodes_keep_between_rounds_decides_whether_a_run_resumes(options, reason):
    from fedkd.apps.driver import node_state_reason
    from fedkd.task import splits_for

    config = Config(num_clients=4, **options).validated()
    found = node_state_reason(config, splits_for(config))
    assert found is None if reason is None else reason in found
