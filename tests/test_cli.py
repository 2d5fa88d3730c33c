"""`fedkd run` refuses bad input before anything starts: one line on stderr, exit 2, no traceback."""

import json
import signal
import subprocess
import sys

import pytest

from fedkd.cli import main
from fedkd.cliparser import unknown_text


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--alpha", "0"], "alpha=0.0 must be > 0"),
        (["--temperature", "-1"], "temperature=-1.0 must be > 0"),
        (["--clients", "1"], "num-clients=1 is too small"),
        (["--num-public", "5000"], "num-public=5000"),
        (["--method", "magic"], "method 'magic' is unknown"),
        (["--dataset", "imagenet"], "dataset 'imagenet' is unknown"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent"], "mnist"),
        (["--student-model", "cnn", "--dataset", "nothere.npz"], "nothere.npz"),
        (["--dp-noise-multiplier", "1"], "dp-clip is 0 (off)"),
        (["--dp-clip", "1", "--delta", "2"], "dp-delta=2.0 must lie in (0, 1)"),
        (["--dp-clip", "1", "--epsilon-budget", "3"], "needs dp-noise-multiplier > 0"),
        (["--dp-clip", "1", "--queries-per-round", "600"], "public-sample=600 is larger than num-public=500"),
        (["--teacher-models", "resnet8", "--teacher-dp-noise-multiplier", "1"], "'resnet8' cannot be trained with DP-SGD"),
        (["--dp-clip", "1", "--dp-noise-multiplier", "1", "--secagg-bit-width", "16"], "use secagg-bit-width >= "),
        (["--dp-clip", "1", "--dp-noise-multiplier", "0.001"], "raise dp-granularity-bits"),
        (["--dp-clip", "nan"], "dp-clip=nan must be a finite number"),
        (["--dp-clip", "1", "--dp-noise-multiplier", "inf"], "dp-noise-multiplier=inf must be a finite number"),
    ],
)
def test_bad_input_is_one_line(argv, fragment, capsys, tmp_path):
    assert main(["run", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedkd: error: ") and fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


@pytest.mark.parametrize(
    "argv, line",
    [
        (["run", "--rouds", "3"], "fedkd run: error: unknown option --rouds; did you mean --rounds?"),
        (["run", "--dp-clp=1"], "fedkd run: error: unknown option --dp-clp; did you mean --dp-clip?"),
        (["bench", "round", "--clints", "3"], "fedkd bench round: error: unknown option --clints; did you mean --clients?"),
    ],
)
def test_a_mistyped_option_is_one_line_naming_the_closest(argv, line, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == line + "\n"  # no usage block, no traceback


def test_an_unknown_word_without_a_close_option_says_where_to_look():
    assert unknown_text(["--zzzzz"], ["--rounds", "--seed"]) == "unknown option --zzzzz; --help lists the options"
    assert unknown_text(["3"], ["--rounds"]) == "unexpected argument '3' (options start with --)"


def test_empty_partition_is_refused(capsys, tmp_path):
    # 200 clients cannot each get an example of 938 with pathological 1-class splits of digits
    code = main(["run", "--out", str(tmp_path), "--clients", "200", "--partition", "iid", "--num-public", "1500"])
    assert code == 2
    assert "num-public=1500" in capsys.readouterr().err


def test_console_script_reports_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedkd.cli", "run", "--alpha", "-2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "alpha=-2.0 must be > 0" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_round_phases_split_the_client_wall_time():
    from fedkd.bench.round import phases
    from fedkd.rounds import RoundRecord, SecAggStats

    secagg = SecAggStats(survivors=[0, 1], upload_bytes_per_client=1.0, seconds_total=0.5,
                         server_compute_seconds={"unmask": 0.02, "masked_input": 0.01})
    record = RoundRecord(1, client_train_seconds_max=1.0, client_predict_seconds_max=0.25, seconds_clients=2.0,
                         client_work_seconds=1.75, seconds_aggregate=0.5, seconds_distill=3.0, seconds_evaluate=0.1,
                         seconds=5.7, secagg=secagg)
    p = phases(record, parallel=True)  # nodes in parallel (Ray): the slowest client's work
    assert p["messaging and scheduling"] == pytest.approx(0.75)
    p = phases(record)  # one client after another (in process): every client's work
    assert p["clients' training and prediction (all clients)"] == 1.75
    assert p["messaging and scheduling"] == pytest.approx(0.25)
    assert p["  of which secagg server compute"] == pytest.approx(0.03)
    assert p["round total"] == 5.7


def test_bench_round_bad_setting_is_one_line(capsys):
    assert main(["bench", "round", "--set", "alpha=-1"]) == 2
    assert "alpha=-1.0 must be > 0" in capsys.readouterr().err
    assert main(["bench", "round", "--set", "alpha"]) == 2


def test_interrupted_run_is_marked_and_keeps_its_rounds(tmp_path):
    import json

    from fedkd.cli import _mark_interrupted
    from fedkd.config import Config
    from fedkd.results import RunRecorder

    rec = RunRecorder(Config(out=str(tmp_path)))
    rec.start()
    rec.add_round({"round": 1, "student_accuracy": 0.5})
    _mark_interrupted(str(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "interrupted" and saved["rounds"] == [{"round": 1, "student_accuracy": 0.5}]


def test_audit_is_a_fedkd_command(capsys, tmp_path):
    assert main(["audit", "--view", "everything", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "view 'everything' is unknown" in err and err.count("\n") == 1
    code = main(["audit", "--json", "--view", "secagg", "--canaries", "20", "--canaries-per-run", "10",
                 "--local-epochs", "2", "--out", str(tmp_path / "b")])
    assert code == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert list(result["views"]) == ["secagg"] and result["setting"]["trials"] == 20
    assert (tmp_path / "b" / "audit.json").exists() and (tmp_path / "b" / "audit_roc.png").exists()


# ---- the output folder (issue 11) ---------------------------------------------------------------

def test_an_out_that_cannot_be_created_is_refused_before_anything_starts(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in ("/proc/forbidden", str(blocker / "out")):
        assert main(["run", "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fedkd: error: out '{out}' cannot be created or written") and err.count("\n") == 1


def test_latest_gets_a_fresh_timestamped_folder_and_earlier_runs_are_kept(tmp_path):
    import datetime

    from fedkd.results import prepare_out

    when = datetime.datetime(2030, 1, 2, 3, 4, 5)
    old = tmp_path / "runs" / "latest"  # what an older fedkd left: a real folder
    old.mkdir(parents=True)
    (old / "results.json").write_text("{}")
    first = prepare_out(old, now=when)
    second = prepare_out(old, now=when)  # same second: a suffix, not the same folder
    assert first == tmp_path / "runs" / "20300102-030405" and second == tmp_path / "runs" / "20300102-030405-2"
    assert old.is_symlink() and old.resolve() == second.resolve() and first.is_dir()
    kept = [p for p in (tmp_path / "runs").iterdir() if (p / "results.json").exists() and not p.is_symlink()]
    assert len(kept) == 1 and kept[0] not in (first, second)  # the old folder, renamed to its own time


def test_a_folder_with_an_earlier_run_is_refused_unless_forced(capsys, tmp_path):
    from fedkd.results import OutputError, prepare_out

    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="already holds the results of an earlier run"):
        prepare_out(tmp_path)
    assert main(["run", "--out", str(tmp_path)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert prepare_out(tmp_path, force=True) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # only fedkd's own files go


# ---- options ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], (False, False, True)),  # the consistency check is on by default
        (["--download", "--public-labels", "--no-secagg-consistency-check"], (True, True, False)),
        (["--download", "true", "--public-labels", "yes"], (True, True, True)),
        (["--download", "--no-download", "--secagg-consistency-check", "false"], (False, False, False)),
        (["--public-labels", "--rounds", "2", "--secagg-consistency-check"], (False, True, True)),
    ],
)
def test_boolean_options_are_bare_flags_with_no_twins(argv, expected):
    from fedkd.cli import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["run", *argv]))
    assert (config.download, config.public_labels, config.secagg_consistency_check) == expected


# ---- --config FILE ------------------------------------------------------------------------------

def _config_of(argv):
    from fedkd.cli import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(["run", *argv]))


def test_a_config_file_sets_what_the_command_line_does_not(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('rounds = 7\nalpha = 0.3\ndataset = "digits"\npublic-labels = true\nnum-clients = 4\n')
    config = _config_of(["--config", str(path), "--rounds", "2", "--clients", "6"])
    assert (config.rounds, config.num_clients) == (2, 6)  # the command line wins
    assert (config.alpha, config.public_labels, config.dataset) == (0.3, True, "digits")  # the file fills in
    assert config.seed == 0  # neither: the default


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("rouds = 3\n", "run.toml: unknown setting 'rouds'; did you mean 'rounds'?"),
        ("num_clients = 3\n", "unknown setting 'num_clients'; did you mean 'num-clients'?"),
        ("zzz = 1\n", "unknown setting 'zzz'; docs/configuration.md lists the settings"),
        ('rounds = "three"\n', "rounds='three' is not a valid int"),
        ("alpha = 0\n", "alpha=0.0 must be > 0"),
        ("rounds = [1, 2]\n", "setting 'rounds' takes one value, not a TOML array"),
        ("[tool.flwr.app.config]\nrounds = 2\n", "unknown setting 'tool'"),
        ("rounds = \n", "run.toml is not valid TOML: "),
    ],
)
def test_a_bad_config_file_is_one_line_naming_what_is_wrong(text, fragment, capsys, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedkd: error: ") and fragment in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_config_file_that_cannot_be_read_is_one_line(capsys, tmp_path):
    missing = tmp_path / "nothere.toml"
    assert main(["run", "--config", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"fedkd: error: --config {missing} cannot be read: No such file or directory\n"


# ---- what a run records -------------------------------------------------------------------------

def test_config_json_records_versions_date_and_what_auto_resolved_to(tmp_path):
    import json
    import platform

    import flwr
    import numpy
    import torch

    from fedkd.config import Config
    from fedkd.results import RunRecorder, resolved_settings
    from fedkd.task import splits_for

    config = Config(out=str(tmp_path), num_clients=10, teacher_models="auto,cnn")
    rec = RunRecorder(config)
    rec.start()
    rec.describe(resolved_settings(config, splits_for(config)))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved == json.loads((tmp_path / "results.json").read_text())["config"]
    env = saved["environment"]
    assert (env["flwr"], env["numpy"], env["python"]) == (flwr.__version__, numpy.__version__, platform.python_version())
    assert env["torch"] == torch.__version__ and env["fedkd"] and env["date"][:2] == "20"
    resolved = saved["resolved"]
    assert resolved["input_shape"] == [1, 8, 8] and resolved["num_classes"] == 10
    assert resolved["teacher_models"][:2] == ["mlp", "cnn"] and resolved["student_model"] == "mlp"
    assert len(resolved["partition_sizes"]) == 10 and resolved["num_public"] == 500
    # 10 clients: k = 2 * ceil(log2 10) = 8 neighbours, c = 2 colluders, t = (k + c) // 2 + 1 = 6,
    # m = k + c + 1 - t = 5 partners at least; clip 1 for mean soft labels
    assert resolved["secagg"] == {"clip": 1.0, "scale": 2.0**18, "bit_width": 24, "neighbors": 8, "threshold": 6,
                                  "max_colluders": 2, "min_partners": 5, "consistency_check": True}
    assert saved["secagg-neighbors"] == 0  # the setting as given stays next to what it became


def test_student_to_ensemble_is_recorded_per_round(tmp_path):
    import json

    from fedkd.config import Config
    from fedkd.results import RunRecorder

    rec = RunRecorder(Config(out=str(tmp_path)))
    rec.start()
    rec.add_round({"round": 1, "student_accuracy": 0.45, "ensemble_accuracy": 0.9})
    rec.add_round({"round": 2, "student_accuracy": 0.5, "ensemble_accuracy": None})  # e.g. DP: no ensemble shown
    rounds = json.loads((tmp_path / "results.json").read_text())["rounds"]
    assert rounds[0]["student_to_ensemble"] == pytest.approx(0.5) and rounds[1]["student_to_ensemble"] is None


# ---- what the console shows ---------------------------------------------------------------------

RAY_ERROR = ("\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=1)\nTraceback (most recent call last):\n"
             "  File \"secure.py\", line 200, in client_step\n    raise RuntimeError(...)\n"
             "RuntimeError: client 7: simulated drop-out at stage 'share_keys' (config 'drop')\n\n"
             "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. "
             "Message: client 7: simulated drop-out at stage 'share_keys' (config 'drop')\n")


def test_errors_are_one_console_line_and_run_log_keeps_them_whole(tmp_path):
    import logging

    from flwr.common.logger import ConsoleHandler, log

    from fedkd.cli import run_logging

    flwr_logger = logging.getLogger("flwr")
    before = list(flwr_logger.handlers)
    said: list[str] = []
    with run_logging(tmp_path / "run.log", say=said.append):
        for h in logging.getLogger("ray").handlers:  # what ray.init does to the handlers on its logger
            h.setFormatter(logging.Formatter("\x1b[36m%(message)s"))
        log(logging.ERROR, "An exception was raised when processing a message by RayBackend")
        log(logging.ERROR, RAY_ERROR)
        log(logging.ERROR, "Traceback (most recent call last):\n  ...\n" + RAY_ERROR)  # the same event again
        log(logging.WARNING, "DEPRECATED FEATURE: run_simulation")
        log(logging.INFO, "fedkd: waiting for 3 nodes, 2 connected")
        logging.getLogger("ray").error("raylet: worker died")
        assert not any(isinstance(h, ConsoleHandler) for h in flwr_logger.handlers)
    assert said == ["flwr error: client 7: simulated drop-out at stage 'share_keys' (config 'drop')"]
    text = (tmp_path / "run.log").read_text()
    assert text.count("Traceback") == 3 and "DEPRECATED FEATURE" in text  # every record whole and "waiting for 3 nodes" in text
    assert "raylet: worker died" in text and "\x1b" not in text
    assert flwr_logger.handlers == before  # Flower's console handler is back after the run


def _results(drops: dict | None = None) -> dict:
    from dataclasses import fields

    from fedkd.rounds import PrivacyStats, RoundRecord, SecAggStats

    # results.json's rows as the server writes them (every key; the figures below are what the table shows)
    privacy = PrivacyStats(**{**{f.name: 0 for f in fields(PrivacyStats)}, "epsilon": 1.234, "mechanism": "ddg"})
    rounds = []
    for r in (1, 2):
        secagg = SecAggStats(survivors=list(range(8)), dropped=drops or {}, upload_bytes_per_client=35_512.0,
                             seconds_total=3.21)
        record = RoundRecord(r, student_accuracy=0.8802, student_nll=0.41, student_ece=0.05, ensemble_accuracy=0.9053,
                             teacher_accuracy_mean=0.5649, teacher_accuracy_std=0.123,
                             upload_bytes_per_client=35_512.0, seconds=47.04, secagg=secagg, privacy=privacy)
        rounds.append({**record.to_json(), "student_to_ensemble": record.student_to_ensemble})
    config = {"method": "fd", "dataset": "digits", "num-clients": 10, "partition": "dirichlet", "alpha": 0.5,
              "temperature": 3.0}
    return {"status": "completed", "config": config, "rounds": rounds, "final": {}}


def test_summary_fits_80_columns_without_cutting_a_figure(tmp_path):
    import io

    from rich.console import Console

    from fedkd.cli import summary_table, write_summary

    results = _results({"share_keys": [7], "unmask": [3]})
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(summary_table(results, 50.3, width=80))
    text = console.file.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for figure in ("0.8802", "0.9053", "0.97", "0.5649", "47.0", "1.234", "share_keys: 7; unmask: 3"):
        assert figure in text, figure
    write_summary(results, 50.3, tmp_path / "summary.txt")
    full = (tmp_path / "summary.txt").read_text()
    assert "…" not in full and "\x1b" not in full
    for column in ("NLL", "ECE", "upload B/client", "student/ensemble", "survivors", "dropped (stage: ids)"):
        assert column in full, column
    assert max(len(line) for line in full.splitlines()) > 80  # the full table needs the room it takes
    wide = Console(file=io.StringIO(), width=250, color_system=None)
    wide.print(summary_table(results, 50.3, width=250))
    assert "upload B/client" in wide.file.getvalue()  # a wide terminal gets every column


def test_run_shows_one_line_per_drop_out_and_keeps_the_full_log(tmp_path):
    """End to end (one small simulation): the default out, the console, run.log, summary.txt."""
    import json
    import os
    from pathlib import Path

    project = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "fedkd.cli", "run", "--clients", "4", "--rounds", "1", "--drop", "unmask:1",
         "--local-epochs", "1", "--digest-epochs", "0", "--distill-epochs", "2", "--num-public", "100"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console
    assert "Traceback" not in console and "\x1b" not in console  # not a terminal: no colour codes
    assert [line for line in console.splitlines() if "simulated drop-out" in line] == [
        "flwr error: client 1: simulated drop-out at stage 'unmask' (config 'drop')"]
    assert len(console.splitlines()) < 30, console
    assert "input (1, 8, 8)" in console and "neighbours" in console  # what auto resolved to
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink()
    out = latest.resolve()
    assert out.parent == (tmp_path / "runs").resolve() and out.name[:2] == "20"
    log = (out / "run.log").read_text()
    assert "Traceback" in log and "simulated drop-out at stage 'unmask'" in log and "\x1b" not in log
    saved = json.loads((out / "results.json").read_text())
    assert (tmp_path / saved["config"]["out"]).resolve() == out and saved["config"]["environment"]["flwr"]
    r = saved["rounds"][0]
    assert r["student_to_ensemble"] == pytest.approx(r["student_accuracy"] / r["ensemble_accuracy"])
    assert "dropped unmask: 1" in console and (out / "summary.txt").is_file()


def test_waiting_for_nodes_says_at_once_what_it_waits_for():
    import logging

    from fedkd.apps.driver import wait_for_nodes
    from fedkd.config import Config

    class Grid:  # 2 nodes connected, the third one joins on the fourth look
        calls = 0

        def get_node_ids(self):
            self.calls += 1
            return [1, 2] if self.calls < 4 else [1, 2, 3]

    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("flwr").addHandler(handler)
    try:
        nodes = wait_for_nodes(Grid(), Config(num_clients=3, timeout=600), poll=0.0, report_every=0.0)
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    assert nodes == [1, 2, 3]
    assert len(said) == 3 and said[0].startswith("fedkd: waiting for 3 nodes, 2 connected")
    assert "num-clients must equal the number of SuperNodes" in said[0]


def test_the_transfer_line_names_the_architecture_students():
    from fedkd.cli import describe
    from fedkd.config import Config
    from fedkd.results import resolved_settings
    from fedkd.task import splits_for

    def transfer(**options):
        config = Config(num_clients=4, **options).validated()
        return next(line for line in describe(config, resolved_settings(config, splits_for(config)))
                    if line.startswith("transfer:"))

    assert "cnn teachers: their architecture's own global student" in transfer(teacher_models="mlp,cnn")
    assert "own global student" not in transfer()
    assert "own global student" not in transfer(teacher_models="mlp,cnn", architecture_students=False)
    # every teacher unlike the student (digits: an MLP): none starts from the student itself
    assert "start from their architecture's own global student," in transfer(teacher_models="cnn")


# Run `fedkd run` with the server held inside a chosen round: once that round's clients have
# answered, it marks a file and waits there for the test's signal (an event, not a deadline).
STOP_IN_ROUND = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, even if our shell ignores it
from pathlib import Path
from fedkd.server import DistillationServer
marker, at = Path(sys.argv[1]), int(sys.argv[2])
finish_round = DistillationServer.finish_round
def held(self, server_round, *args, **kwargs):
    if server_round == at:
        marker.touch()
        while True:
            time.sleep(0.05)
    return finish_round(self, server_round, *args, **kwargs)
DistillationServer.finish_round = held
from fedkd.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                (signal.SIGINT, 130, "interrupted")])
def test_a_stopped_run_keeps_its_finished_rounds_and_summary_and_resumes(tmp_path, signum, code, word):
    """SIGTERM (batch schedulers, `timeout`) stops a run as quietly as Ctrl-C: sent during round 2
    (its clients have answered, the server has not finished it), the run ends with round 1 in
    results.json, summary.txt written for it, one line and no traceback; `--resume` then runs
    rounds 2 and 3 and completes the run."""
    import os
    import time
    from pathlib import Path

    project = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")]))}
    out, marker, script = tmp_path / "out", tmp_path / "in-round-2", tmp_path / "stop_in_round.py"
    script.write_text(STOP_IN_ROUND)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marker), "2", "run", "--clients", "3", "--rounds", "3", "--local-epochs",
         "1", "--distill-epochs", "2", "--num-public", "100", "--aggregation", "plain", "--out", str(out)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not marker.exists():  # the run is inside round 2
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signum)
    console, _ = proc.communicate(timeout=600)
    assert proc.returncode == code, console
    assert "Traceback" not in console and f"fedkd: {word}" in console
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "interrupted" and [r["round"] for r in saved["rounds"]] == [1]
    assert (out / "summary.txt").is_file() and "round" in (out / "summary.txt").read_text()

    assert main(["run", "--resume", str(out)]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "completed" and [r["round"] for r in saved["rounds"]] == [1, 2, 3]
    summary = (out / "summary.txt").read_text()  # now for every round: round 3's student is in it
    assert f"{saved['rounds'][2]['student_accuracy']:.4f}" in summary
