"""`fedkd compare`: methods over seeds through the engine, a table, a plot and JSON; a stopped
comparison resumes without running a finished run again; bad input is one line."""

import json

import pytest

from fedkd.cli import main

TINY = ["--set", "num-clients=3", "--set", "local-epochs=1", "--set", "distill-epochs=2", "--set", "num-public=100",
        "--set", "rounds=1", "--set", "aggregation=plain"]


def test_methods_over_seeds_then_a_resumed_comparison_runs_nothing_again(tmp_path, capsys, monkeypatch):
    argv = ["compare", "--methods", "fd,fedavg", "--seeds", "0,1", "--vary", "alpha=0.1,0.5", *TINY,
            "--out", str(tmp_path)]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["varied"] == "alpha" and len(saved["runs"]) == 8 and len(saved["rows"]) == 4
    for row in saved["rows"]:
        assert row["seeds"] == 2 and 0.0 < row["mean"] <= 1.0
        assert row["std"] == pytest.approx((abs(row["accuracies"][0] - row["accuracies"][1])) / 2)
    table = (tmp_path / "compare.md").read_text()
    assert "| fd | 0.1 |" in table and "| fedavg | 0.5 |" in table
    assert all((tmp_path / name).is_file() for name in ("compare.csv", "compare.png", "compare.pdf"))
    assert len(list((tmp_path / "runs").iterdir())) == 8

    # again: every run is read back from its folder, none runs (simulate would fail here)
    import fedkd.simulation

    monkeypatch.setattr(fedkd.simulation, "simulate", lambda *a, **k: pytest.fail("ran a finished run again"))
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("done before") == 8
    assert json.loads((tmp_path / "compare.json").read_text())["rows"] == saved["rows"]


def test_a_changed_setting_is_not_taken_for_a_finished_run(tmp_path, monkeypatch):
    assert main(["compare", "--methods", "fd", "--seeds", "0", *TINY, "--out", str(tmp_path)]) == 0
    import fedkd.simulation

    calls = []
    real = fedkd.simulation.simulate
    monkeypatch.setattr(fedkd.simulation, "simulate", lambda cfg, **k: calls.append(cfg) or real(cfg, **k))
    assert main(["compare", "--methods", "fd", "--seeds", "0", *TINY, "--set", "temperature=2",
                 "--out", str(tmp_path)]) == 0
    assert len(calls) == 1 and calls[0].temperature == 2.0  # the same folder, other settings: run again


@pytest.mark.parametrize("argv, words", [
    (["--methods", "fd,fedav"], "choose from"), (["--seeds", "0,x"], "comma list of integers"),
    (["--vary", "alpha"], "KEY=V1,V2"), (["--set", "alpha"], "KEY=VALUE"), (["--vary", "alpah=0.1"], "alpah"),
    (["--set", "alpha=-1"], "alpha=-1.0 must be > 0")])
def test_bad_input_is_one_line_and_runs_nothing(tmp_path, capsys, argv, words):
    assert main(["compare", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedkd: error:") and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "runs").exists()
