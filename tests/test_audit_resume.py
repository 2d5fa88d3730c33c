"""`fedkd audit` keeps what it finished: each training is on disk as soon as it ends, an audit
stopped mid-way (a hook, SIGINT or SIGTERM at a chosen training) keeps them, and the same audit
run again trains only what is missing and gives the uninterrupted result."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedkd.privacy import audit, audit_cli

SMALL = dict(view="all", clients=3, canaries=20, canaries_per_run=5, local_epochs=1)  # 3 clean + 4 canary runs
ARGV = ["--clients", "3", "--canaries", "20", "--canaries-per-run", "5", "--local-epochs", "1"]


def _count_trainings(monkeypatch) -> list:
    """Every training the audit runs from now on, counted (`_release` trains one teacher)."""
    calls = []
    release = audit._release

    def counted(*args, **kwargs):
        calls.append(args[1])  # the client trained
        return release(*args, **kwargs)

    monkeypatch.setattr(audit, "_release", counted)
    return calls


def _without_seconds(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "seconds"}


def test_a_stopped_audit_keeps_its_trainings_and_the_rerun_trains_only_the_rest(tmp_path, monkeypatch):
    setting = audit.prepare(**SMALL)
    whole = audit.execute(setting)

    def stop_after_two_runs(done, total):  # done 1 is the clean round; 3 is the second canary run
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        audit.execute(setting, stop_after_two_runs, pieces=audit_cli.TrainingFolder(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clean-0.npz", "clean-1.npz", "clean-2.npz", "run-0.npz", "run-1.npz"]

    calls = _count_trainings(monkeypatch)
    kept = audit_cli.TrainingFolder(tmp_path)
    again = audit.execute(setting, pieces=kept)
    assert len(calls) == 2 and kept.reused == 5  # runs 2 and 3 only
    assert _without_seconds(again) == _without_seconds(whole)


def test_kept_trainings_serve_other_views_and_noise_but_not_other_training(tmp_path, monkeypatch):
    audit.execute(audit.prepare(**SMALL), pieces=audit_cli.TrainingFolder(tmp_path))
    calls = _count_trainings(monkeypatch)
    audit.execute(audit.prepare(**{**SMALL, "view": "secagg-dp", "dp_noise_multiplier": 2.0}),
                  pieces=audit_cli.TrainingFolder(tmp_path))
    assert calls == []  # the views and the DP options do not change what the teachers release
    audit.execute(audit.prepare(**{**SMALL, "local_epochs": 2}), pieces=audit_cli.TrainingFolder(tmp_path))
    assert len(calls) == 3 + 4  # other teachers: every training again, each file replaced


# `fedkd audit` with its 5th training held until the test's signal (3 clean releases and the first
# canary run are done then): it marks a file and waits there, an event rather than a deadline.
HOLD_AT_TRAINING = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, even if our shell ignores it
from pathlib import Path
from fedkd.privacy import audit
marker, at = Path(sys.argv[1]), int(sys.argv[2])
release, calls = audit._release, []
def held(*args, **kwargs):
    calls.append(1)
    if len(calls) == at:
        marker.touch()
        while True:
            time.sleep(0.05)
    return release(*args, **kwargs)
audit._release = held
from fedkd.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                (signal.SIGINT, 130, "interrupted")])
def test_a_signal_stops_the_audit_in_one_line_and_the_same_command_goes_on(tmp_path, monkeypatch, capsys,
                                                                          signum, code, word):
    project = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")]))}
    out, marker, script = tmp_path / "audit", tmp_path / "held", tmp_path / "hold_at_training.py"
    script.write_text(HOLD_AT_TRAINING)
    proc = subprocess.Popen([sys.executable, str(script), str(marker), "5", "audit", "--out", str(out), *ARGV],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not marker.exists():  # the audit is inside its 5th training
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert stderr.strip().splitlines()[-1] == (
        f"fedkd audit: {word}; 4 of 7 trainings are kept in {out / 'trainings'}: the same command goes on from them")
    assert len(list((out / "trainings").iterdir())) == 4 and not (out / "audit.json").exists()

    calls = _count_trainings(monkeypatch)
    parser = argparse.ArgumentParser(prog="fedkd audit")
    audit_cli.add_arguments(parser)
    assert audit_cli.main(parser.parse_args(["--out", str(out), *ARGV])) == 0
    assert len(calls) == 3  # canary runs 1..3; the clean releases and run 0 were read back
    assert "4 of them read back" in capsys.readouterr().out
    assert json.loads((out / "audit.json").read_text())["setting"]["runs"] == 4
