"""Typed round records: results.json's keys and order, the client's wire keys, how a run ends."""

import json

import pytest

from fedkd.config import Config
from fedkd.results import RunRecorder
from fedkd.rounds import ROUND_KEYS, ClientMetrics, PrivacySpent, RoundRecord, SecAggStats, TeacherEpsilon


def test_a_round_row_has_every_key_in_order_with_null_for_absent_parts():
    record = RoundRecord(3, student_accuracy=0.9, cohort=(0, 2))
    row = record.to_json()
    # new keys go last, so earlier files' columns keep their places
    assert tuple(row) == ROUND_KEYS and ROUND_KEYS[0] == "round" and ROUND_KEYS[-2:] == ("cohort", "failed_clients")
    assert row["secagg"] is None and row["privacy"] is None and row["cohort"] == [0, 2]
    assert record.student_accuracy == 0.9 and record.student_to_ensemble is None  # no ensemble to compare with
    assert RoundRecord(1, student_accuracy=0.9, ensemble_accuracy=0.95).student_to_ensemble == pytest.approx(0.9 / 0.95)
    with pytest.raises(TypeError):  # a record is read by attribute: a mistyped name fails, not a string key
        record["student_accuracy"]


def test_a_row_reads_back_as_the_same_record():
    secagg = SecAggStats(survivors=[0, 1], upload_bytes_per_client=12.0, seconds_total=0.5, dropped={"unmask": [2]})
    record = RoundRecord(1, ensemble_accuracy=0.8, secagg=secagg, cohort=(0, 1, 2), stalled_clients=(2,),
                         teacher_epsilon=TeacherEpsilon(2.0, 1e-5, {"0": 2.0}), prototype_accuracy={"mlp": 0.75})
    row = json.loads(json.dumps(record.to_json()))
    assert RoundRecord.from_json({**row, "student_to_ensemble": None}) == record


def test_client_metrics_travel_under_hyphenated_keys_and_absent_ones_are_not_sent():
    sent = {"partition-id": 4.0, "train-seconds": 1.5, "train-recoveries": 1.0, "predict-seconds": 0.25}
    metrics = ClientMetrics.from_wire(sent)
    assert metrics.train_recoveries == 1 and metrics.teacher_accuracy is None
    assert metrics.to_wire() == {"train-seconds": 1.5, "predict-seconds": 0.25, "train-recoveries": 1.0}


def test_a_stopped_run_records_its_status_reason_and_privacy(tmp_path):
    rec = RunRecorder(Config(out=str(tmp_path)))
    rec.start()
    rec.add_round(RoundRecord(1, student_accuracy=0.5, ensemble_accuracy=None))
    rec.spend(PrivacySpent(1.5, 1e-5, None, 1))
    rec.stop("budget-exhausted", "round 2 would raise epsilon")
    results = rec.finish(1.0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["status"] == "budget-exhausted" and saved["stopped"] == "round 2 would raise epsilon"
    assert list(saved)[-2:] == ["privacy", "stopped"]  # in the order they happened, as before
    assert saved["privacy"] == {"epsilon": 1.5, "delta": 1e-5, "budget": None, "rounds_released": 1}
    assert saved["rounds"][0]["student_to_ensemble"] is None and tuple(saved["rounds"][0])[:-1] == ROUND_KEYS


def test_bench_round_takes_its_defaults_from_config():
    import argparse

    from fedkd.bench.round import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.clients, args.dataset, args.aggregation) == (Config().num_clients, Config().dataset,
                                                              Config().aggregation)
