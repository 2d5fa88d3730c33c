"""What a run leaves for a paper: the student's weights (student.pt), the rounds and the run as CSV
beside results.json, and curves.png / curves.pdf that show every line on whole-round ticks."""

import csv
import json

import pytest
import torch

from fedkd.config import Config
from fedkd.results import (
    RunRecorder,
    curves_figure,
    dataset_name,
    plot_curves,
    round_columns,
    run_title,
    write_tables,
)

TINY = {"num_clients": 3, "rounds": 2, "local_epochs": 1, "distill_epochs": 2, "num_public": 100, "aggregation": "plain"}


def _student_accuracy(config: Config, path) -> float:
    """Test accuracy of the weights in `path`, loaded into the run's student architecture."""
    from fedkd import distill
    from fedkd.models import build_model
    from fedkd.task import splits_for

    splits = splits_for(config)
    model = build_model(config.student_model, splits.input_shape, splits.num_classes)
    model.load_state_dict(torch.load(path, weights_only=True))
    return distill.accuracy(distill.predict_logits(model, splits.test_x, torch.device("cpu")), splits.test_y)


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- student.pt, rounds.csv and summary.csv from a real run ------------------------------------

def test_student_pt_holds_the_last_finished_rounds_student_and_csvs_match_results(tmp_path):
    from fedkd.simulation import simulate

    config = Config(**TINY, out=str(tmp_path))
    seen_before_round_2 = []

    def on_round(record):  # round 2's row is saved, its student not yet: student.pt is still round 1's
        if record.round == 2:
            seen_before_round_2.append(_student_accuracy(config, tmp_path / "student.pt"))

    simulate(config, on_round=on_round)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert _student_accuracy(config, tmp_path / "student.pt") == saved["final"]["student_accuracy"]
    assert seen_before_round_2 == [saved["rounds"][0]["student_accuracy"]]

    rounds = _rows(tmp_path / "rounds.csv")
    assert [int(r["round"]) for r in rounds] == [1, 2]
    for row, json_row in zip(rounds, saved["rounds"]):
        assert float(row["student_accuracy"]) == json_row["student_accuracy"]  # full precision
        assert float(row["student_to_ensemble"]) == json_row["student_to_ensemble"]
        assert "cohort" not in row and "secagg" not in row  # a list; a block that this run has not
    (summary,) = _rows(tmp_path / "summary.csv")
    assert summary["status"] == "completed" and summary["method"] == "fd" and summary["num-clients"] == "3"
    assert float(summary["student_accuracy"]) == saved["final"]["student_accuracy"]
    assert int(summary["rounds_completed"]) == 2


def test_local_has_no_student_to_save(tmp_path):
    from fedkd.simulation import simulate

    simulate(Config(**{**TINY, "rounds": 1}, method="local", out=str(tmp_path)))
    assert (tmp_path / "results.json").exists() and (tmp_path / "rounds.csv").exists()
    assert not (tmp_path / "student.pt").exists()


def test_save_student_replaces_the_file_whole(tmp_path):
    rec = RunRecorder(Config(out=str(tmp_path)))
    rec.save_student({"w": torch.ones(2)})
    rec.save_student({"w": torch.zeros(3)})
    assert torch.equal(torch.load(tmp_path / "student.pt", weights_only=True)["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["student.pt"]  # no temporary file left behind


# ---- the CSV layout ----------------------------------------------------------------------------

def test_rounds_csv_flattens_blocks_one_level_and_leaves_lists_out(tmp_path):
    rows = [{"round": 1, "student_accuracy": 0.5, "secagg": None, "cohort": [0, 1]},
            {"round": 2, "student_accuracy": float("nan"), "cohort": [0, 2],
             "secagg": {"seconds_total": 1.5, "survivors": [0, 2], "seconds_per_stage": {"unmask": 0.1}}}]
    assert round_columns(rows) == ["round", "student_accuracy", "secagg.seconds_total"]
    write_tables({"status": "running", "config": {"method": "fd", "resolved": {"x": 1}}, "rounds": rows,
                  "final": None}, tmp_path)
    assert _rows(tmp_path / "rounds.csv") == [
        {"round": "1", "student_accuracy": "0.5", "secagg.seconds_total": ""},
        {"round": "2", "student_accuracy": "", "secagg.seconds_total": "1.5"},  # NaN is empty, as null in JSON
    ]
    (summary,) = _rows(tmp_path / "summary.csv")  # while running: the last round's figures so far
    assert summary["status"] == "running" and summary["rounds_completed"] == "2" and summary["seconds_total"] == ""
    assert summary["method"] == "fd" and "resolved" not in summary


def test_every_round_rewrites_rounds_csv_with_results_json(tmp_path):
    rec = RunRecorder(Config(out=str(tmp_path)))
    rec.start()
    rec.add_round({"round": 1, "student_accuracy": 0.4, "ensemble_accuracy": 0.8})
    assert [r["student_to_ensemble"] for r in _rows(tmp_path / "rounds.csv")] == ["0.5"]
    rec.add_round({"round": 2, "student_accuracy": 0.6, "ensemble_accuracy": 0.8})
    assert [r["round"] for r in _rows(tmp_path / "rounds.csv")] == ["1", "2"]


# ---- the curves --------------------------------------------------------------------------------

ROUNDS = [{"round": r, "student_accuracy": s, "ensemble_accuracy": s, "teacher_accuracy_mean": t}
          for r, s, t in [(1, 0.81, 0.62), (2, 0.86, 0.70), (3, 0.90, 0.74)]]


def test_curves_have_whole_round_ticks_a_zoomed_y_axis_and_the_student_on_top():
    import matplotlib.pyplot as plt

    fig = curves_figure(ROUNDS, "a title")
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks == [1, 2, 3]
    bottom, top = ax.get_ylim()
    assert 0.55 < bottom < 0.62 and 0.90 < top < 0.95  # the data's range with a margin, not 0..1
    lines = {line.get_label(): line for line in ax.get_lines()}
    student, ensemble = lines["student"], lines["ensemble teacher"]
    assert student.get_zorder() > ensemble.get_zorder()  # drawn over an ensemble it equals ...
    assert ensemble.get_markersize() > student.get_markersize()  # ... whose hollow squares frame its dots
    assert len({(l.get_linestyle(), l.get_marker()) for l in lines.values()}) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["student", "ensemble teacher", "mean local teacher"]
    plt.close(fig)


def test_curves_of_many_rounds_never_tick_between_rounds():
    import matplotlib.pyplot as plt

    for n in (2, 7, 13, 50):
        fig = curves_figure([{"round": r, "student_accuracy": 0.5 + r / 200} for r in range(1, n + 1)])
        assert all(float(t).is_integer() for t in fig.axes[0].get_xticks()), n
        plt.close(fig)


def test_curves_are_saved_as_png_and_pdf(tmp_path):
    plot_curves(ROUNDS, tmp_path, title="t")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "curves.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize("dataset, name", [
    ("digits", "digits"), ("/home/me/data/my-set.npz", "my-set"), ("./saved/", "saved"),
    ("hf:uoft-cs/cifar100?image=img&label=fine_label", "cifar100"), ("shards.parquet", "shards"),
])
def test_titles_name_a_dataset_by_its_short_name(dataset, name):
    assert dataset_name(dataset) == name


@pytest.mark.parametrize("method, title", [
    ("fd", "fd on my-set: 10 clients, dirichlet (alpha=0.5), T=3"),
    ("fedavg", "FedAvg on my-set: 10 clients, dirichlet (alpha=0.5)"),
    ("central", "central on my-set: 10 clients, dirichlet (alpha=0.5)"),
    ("local", "local on my-set: 10 clients, dirichlet (alpha=0.5)"),
])
def test_the_title_shows_a_temperature_only_for_a_method_that_has_one(method, title):
    cfg = Config(method=method, dataset="/data/my-set.npz").to_run_config()
    import matplotlib.pyplot as plt

    assert run_title(cfg) == title
    fig = curves_figure(ROUNDS, run_title(cfg))
    assert fig.axes[0].get_title() == title
    plt.close(fig)
