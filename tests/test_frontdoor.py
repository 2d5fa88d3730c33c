"""The front doors agree: `fedkd run`, the ServerApp as `flwr run .` starts it and `fedkd deploy`
leave the same files; run.log holds fedkd's own lines; the console wraps on word boundaries;
deploy's console shows fedkd's lines and leaves every process's own lines to run.log; and the
Flower setting that keeps `flwr run .` from installing the dependencies again does what the docs say.

The end-to-end deployments are in tests/test_deploy.py; here the ServerApp runs in this process
(`fedkd.apps.inprocess`), as Flower's runtime would start it, with the run config it would get.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
from rich.console import Console

PROJECT = Path(__file__).resolve().parent.parent
TINY = {"rounds": 1, "num-clients": 3, "local-epochs": 1, "digest-epochs": 0, "distill-epochs": 2,
        "num-public": 100}


def _fedkd_run(out: Path) -> Path:
    from fedkd.cli import main

    argv = ["run", "--out", str(out)]
    for key, value in TINY.items():
        argv += [f"--{key}", str(value)]
    assert main(argv) == 0
    return out


def _flwr_run_server_app(out: Path) -> Path:
    """The module's `app`, which `flwr run .` and `fedkd deploy` start: it reads the run config
    (pyproject's defaults and the overrides, as Flower fuses them) and chooses `out` itself."""
    from fedkd.apps.client_app import app as client_app
    from fedkd.apps.inprocess import run_inprocess
    from fedkd.apps.server_app import app as server_app

    defaults = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    run_config = {**defaults, **TINY, "out": str(out)}
    nodes = [{"partition-id": i, "num-partitions": TINY["num-clients"]} for i in range(TINY["num-clients"])]
    run_inprocess(server_app, client_app, nodes, run_config=run_config)
    return out


# ---- the same files, and run.log ------------------------------------------------------------------

def test_the_server_app_under_flwr_run_leaves_the_same_files_as_fedkd_run(tmp_path, monkeypatch):
    from fedkd.results import CHECKPOINT, RUN_FILES, RUN_LOG_ENV

    monkeypatch.delenv(RUN_LOG_ENV, raising=False)
    ran = _fedkd_run(tmp_path / "fedkd-run")
    served = _flwr_run_server_app(tmp_path / "flwr-run")
    files = sorted(p.name for p in ran.iterdir())
    assert files == sorted(p.name for p in served.iterdir())
    assert set(RUN_FILES) - {CHECKPOINT} <= set(files)  # summary.txt and run.log included
    assert CHECKPOINT not in files  # a finished run is not resumed: its checkpoint is gone
    accuracies = [[r["student_accuracy"] for r in json.loads((folder / "results.json").read_text())["rounds"]]
                  for folder in (ran, served)]
    assert accuracies[0] == accuracies[1]  # the same run, whichever door it came through
    assert all("student acc" in (folder / "summary.txt").read_text() for folder in (ran, served))
    log = (served / "run.log").read_text()
    assert "fedkd round 1: student " in log and "fedkd: round 1: distilling the student" in log
    assert "summary (summary.txt)" in log and "student acc" in log


def test_fedkd_runs_run_log_holds_its_header_phases_round_lines_and_summary(tmp_path, capsys):
    out = _fedkd_run(tmp_path / "run")
    console = capsys.readouterr().err
    log = (out / "run.log").read_text()
    header = [line for line in console.splitlines() if line.startswith(("data:", "partitions:", "models:", "out:"))]
    round_line = next(line for line in console.splitlines() if line.startswith("round 1: student "))
    assert len(header) == 4 and all(line in log for line in header)  # the console's header, word for word
    assert f"INFO fedkd: {round_line}" in log
    assert "INFO fedkd: round 1: 3 clients training" in log and "round 1: secure sum, unmask" in log
    assert "summary (summary.txt):" in log and "teacher acc (mean±sd)" in log
    # in order: header, phases, the round, the summary
    assert log.index("INFO fedkd: data:") < log.index("3 clients training") < log.index(round_line) \
        < log.index("summary (summary.txt)")


def test_a_server_app_whose_launcher_writes_run_log_writes_none(tmp_path, monkeypatch):
    import logging

    from fedkd.results import RUN_LOG_ENV, app_run_log

    monkeypatch.setenv(RUN_LOG_ENV, "launcher")  # as fedkd deploy sets it for every process
    with app_run_log(tmp_path):
        logging.getLogger("fedkd").info("a line")
    assert not (tmp_path / "run.log").exists()
    monkeypatch.delenv(RUN_LOG_ENV)
    with app_run_log(tmp_path):
        logging.getLogger("fedkd").info("a line")
    assert "INFO fedkd: a line" in (tmp_path / "run.log").read_text()


# ---- the console at 80 columns --------------------------------------------------------------------

def _header() -> list[str]:
    from fedkd.cli import describe
    from fedkd.config import Config
    from fedkd.results import resolved_settings
    from fedkd.task import splits_for

    config = Config(num_clients=10).validated()
    return describe(config, resolved_settings(config, splits_for(config)))


def test_header_lines_wrap_on_word_boundaries_at_80_columns():
    from fedkd.cli import show

    lines = _header()
    assert max(map(len, lines)) > 80  # there is something to wrap
    terminal = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    for line in lines:
        show(terminal, line)
    shown = terminal.file.getvalue().splitlines()
    assert max(map(len, shown)) <= 80
    # every word whole: the wrapped lines, joined at their breaks, are the header again
    rejoined, current = [], ""
    for line in shown:
        if line.startswith("  "):  # a continuation line
            current += " " + line.strip()
        else:
            if current:
                rejoined.append(current)
            current = line
    rejoined.append(current)
    assert [re.sub(r"\s+", " ", line) for line in rejoined] == [re.sub(r"\s+", " ", line) for line in lines]


def test_lines_stay_whole_in_a_file():
    from fedkd.cli import show

    lines = _header()
    piped = Console(file=io.StringIO(), width=80, force_terminal=False, color_system=None)
    for line in lines:
        show(piped, line)
    assert piped.file.getvalue().splitlines() == lines  # grep and logs see each line whole


# ---- fedkd deploy's console ------------------------------------------------------------------------

def _deployment_lines(nodes: int, rounds: int, flower_lines: int) -> list[str]:
    """What a deployment's echo receives, in the shapes `fedkd.deploy` writes them: this command's
    own steps, every process's output (`flower_lines` per process and round: Flower's own logging,
    which grows with nodes, rounds and time) and the run's log stream with the ServerApp's lines."""
    said = lambda t, text: f"deploy    | [{t:6.1f}s] {text}"  # noqa: E731 (Deployment.say's shape)
    lines = [said(0.1, "starting superlink: /venv/bin/flower-superlink --host 127.0.0.1 --port 40001 --insecure"),
             said(0.2, f"secure-aggregation roster: {nodes} node identities (node-config/ in the work folder)")]
    lines += [said(1.0 + i, f"starting node-{i}: /venv/bin/flower-supernode --port {40002 + i}") for i in range(nodes)]
    lines += [said(16.0, f"waiting for {nodes} SuperNodes, 1 online (15 of 120s)"),
              said(20.0, f"{nodes} SuperNodes connected; submitting the run"),
              said(20.5, "starting run: /venv/bin/flwr log 7 fedkd-deploy --stream"),
              said(21.0, "run 7 submitted (results in /tmp/out)"),
              "run       | INFO :      Start `flwr-serverapp` process",
              "run       | INFO :      fedkd: results go to /tmp/out"]
    for r in range(1, rounds + 1):
        for i in range(nodes):
            lines += [f"node-{i}    | INFO :      [RUN 7, ROUND ] message {k}" for k in range(flower_lines)]
        lines += [f"superlink | INFO :      Received message {k}" for k in range(flower_lines)]
        lines += [f"run       | INFO :      fedkd: round {r}: {nodes} clients training",
                  f"run       | INFO :      fedkd: round {r}: secure sum, unmask",
                  f"run       | INFO :      fedkd round {r}: student 0.9 (1.00 of ensemble 0.9)  teachers 0.8  9.0 s",
                  f"run       | WARNING :   fedkd: round {r}: local training learnt nothing on client 2"]
    lines += [said(99.0, "run 7 ended: finished:completed"),
              said(99.1, f"stopping {nodes + 2} processes (SIGTERM, then SIGKILL after 10s)")]
    return lines


def _view_output(mode: str, lines: list[str], rounds: int) -> list[str]:
    from fedkd.deploy.cli import ConsoleView

    console = Console(file=io.StringIO(), width=80, force_terminal=False, color_system=None)
    with ConsoleView(mode, console) as view:
        view.start(Path("/tmp/out"), rounds)
        for line in lines:
            view(line)
    return console.file.getvalue().splitlines()


def test_deploys_console_shows_its_steps_and_the_rounds_whatever_flower_logs():
    shown = _view_output("progress", _deployment_lines(nodes=3, rounds=2, flower_lines=40), rounds=2)
    assert [line for line in shown if line.startswith("round ")] == \
        [f"round {r}: student 0.9 (1.00 of ensemble 0.9)  teachers 0.8  9.0 s" for r in (1, 2)]
    assert "fedkd warning: round 2: local training learnt nothing on client 2" in shown
    assert not any(line.startswith(("node-", "superlink", "run ")) for line in shown)  # run.log has them
    assert not any("--port" in line or "waiting for" in line for line in shown)  # command lines; the progress line
    assert any("SuperNodes connected; submitting the run" in line for line in shown)
    # more nodes, rounds' worth of Flower lines and waits do not add lines; a round adds its line and warning
    more = _view_output("progress", _deployment_lines(nodes=10, rounds=2, flower_lines=400), rounds=2)
    assert len(more) == len(shown) < 20


def test_deploys_quiet_console_shows_its_steps_only_and_verbose_shows_everything():
    lines = _deployment_lines(nodes=3, rounds=1, flower_lines=5)
    quiet = _view_output("quiet", lines, rounds=1)
    steps = [line for line in lines if line.startswith("deploy") and "] starting " not in line]
    assert quiet == ["fedkd deploy: out: /tmp/out; full log in /tmp/out/run.log", *steps]
    verbose = _view_output("verbose", lines, rounds=1)
    assert verbose[1:] == lines


def test_deploy_help_and_its_check_agree_on_the_smallest_n(tmp_path, capsys, monkeypatch):
    from fedkd.cli import main
    from fedkd.deploy import build_parser

    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps help at the terminal's width (and after hyphens)
    help_text = " ".join(build_parser().format_help().split())
    assert "at least 3 with secure aggregation (the default), 2 with --run-config 'aggregation=\"plain\"'" in help_text
    monkeypatch.chdir(tmp_path)
    assert main(["deploy", "2", "--app", str(PROJECT)]) == 2  # refused before anything starts
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "secure aggregation needs at least secagg-min-clients=3" in err[0]
    assert "use aggregation=plain" in err[0] and not (tmp_path / "runs").exists()


# ---- flwr run . and the dependencies it installs -------------------------------------------------

@pytest.mark.parametrize("value, installs", [(None, True), ("1", False)])
def test_flowers_superlink_installs_the_apps_dependencies_unless_told_not_to(monkeypatch, value, installs):
    """What docs/usage.md says of Flower 1.42: the SuperLink that `flwr run .` starts installs the
    app's dependencies into a fresh environment for each run (`uv sync`: PyPI's torch, the CUDA
    build on Linux) unless FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 is set where it starts."""
    flower_superlink = pytest.importorskip("flwr.superlink.cli.flower_superlink")
    if not hasattr(flower_superlink, "_runtime_dependency_install_default"):
        pytest.skip("this Flower's SuperLink has no runtime dependency installation (before 1.42)")
    if value is None:
        monkeypatch.delenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", raising=False)
    else:
        monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", value)
    assert flower_superlink._runtime_dependency_install_default() is installs


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the managed SuperLink through /proc")
def test_flwr_run_without_dependency_installation_uses_this_environment_and_leaves_fedkd_runs_files(tmp_path):
    """`FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run .` (README): no environment is made
    and nothing downloaded, and the folder holds `fedkd run`'s files. Flower's managed SuperLink
    runs here with its own FLWR_HOME and ports, and every process it leaves is stopped."""
    from fedkd.deploy import free_ports, marked_pids
    from fedkd.results import RUN_FILES

    tag = uuid.uuid4().hex
    http_port, control_port = free_ports(2)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FEDKD_TEST_TAG": tag,
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port), "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "out"
    overrides = " ".join(f"{k}={v}" for k, v in TINY.items()) + f' out="{out}"'
    try:
        done = subprocess.run([str(bin_dir / "flwr"), "run", ".", "--federation-config", "num-supernodes=3",
                               "--run-config", overrides, "--stream"], cwd=PROJECT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        assert set(RUN_FILES) <= {p.name for p in out.iterdir()}, done.stdout
        assert not (tmp_path / "flwr-home" / "runtime-envs").exists()  # no environment was made for the run
        assert "fedkd round 1: student " in (out / "run.log").read_text()
    finally:
        for pid in marked_pids(tag, name="FEDKD_TEST_TAG"):  # the managed SuperLink stays up otherwise
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
