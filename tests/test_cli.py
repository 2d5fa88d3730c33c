"""`fedkd run` refuses bad input before anything starts: one line on stderr, exit 2, no traceback."""

import subprocess
import sys

import pytest

from fedkd.cli import main


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

    record = {"client_train_seconds_max": 1.0, "client_predict_seconds_max": 0.25, "seconds_clients": 2.0,
              "seconds_aggregate": 0.5, "seconds_distill": 3.0, "seconds_evaluate": 0.1, "seconds": 5.7,
              "secagg": {"server_compute_seconds": {"unmask": 0.02, "masked_input": 0.01}}}
    p = phases(record)
    assert p["messaging and scheduling"] == pytest.approx(0.75)
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
