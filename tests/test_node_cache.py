"""What a node keeps between messages: the run's Config parsed once per set of settings, the
splits loaded once per process, and no torch in a secure-aggregation stage's process."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
from flwr.app import RecordDict

from fedkd.apps.records import config_from_message, config_record
from fedkd.config import Config, ConfigError
from fedkd.task import splits_for


def _message(config, server_round=1, **override):
    record = config_record(config, server_round)
    for key, value in override.items():
        record[key] = value
    return SimpleNamespace(content=RecordDict({"config": record}))


def test_the_same_settings_give_the_same_config_without_parsing_again(monkeypatch):
    base = Config(seed=123457)
    first, r1 = config_from_message(_message(base, 1))
    calls = []
    monkeypatch.setattr(Config, "from_run_config", classmethod(lambda cls, values: calls.append(values)))
    second, r2 = config_from_message(_message(base, 2))  # only the round differs
    assert second is first and (r1, r2) == (1, 2) and calls == []


def test_a_changed_setting_is_parsed_and_validated_anew():
    base = Config(seed=123458)
    config, _ = config_from_message(_message(base))
    changed, _ = config_from_message(_message(base, temperature=7.0))
    assert changed.temperature == 7.0 and config.temperature == base.temperature
    with pytest.raises(ConfigError, match="temperature"):
        config_from_message(_message(base, temperature=-1.0))
    with pytest.raises(ConfigError, match="temperature"):  # an error is raised every time, never cached
        config_from_message(_message(base, temperature=-1.0))


def test_a_value_of_another_type_is_not_taken_for_an_equal_one():
    base = Config(seed=123459)
    as_int, _ = config_from_message(_message(base, out=1))  # 1 == True in Python, but str() tells them apart
    as_bool, _ = config_from_message(_message(base, out=True))
    assert (as_int.out, as_bool.out) == ("1", "True")


def test_splits_are_loaded_once_per_process_for_the_same_data_settings():
    config = Config(num_clients=3, num_public=100)
    assert splits_for(config) is splits_for(config.replace(temperature=3.0, rounds=2))  # no data setting changed
    assert splits_for(config) is not splits_for(config.replace(seed=config.seed + 1))


def test_a_secure_aggregation_stage_imports_no_torch():
    code = ("import sys, fedkd.apps.client_app, fedkd.apps.secure; "
            "print(sorted(m for m in ('torch', 'sklearn', 'flwr_datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_splits_kept_on_disk_are_read_back_bitwise_without_splitting_again(tmp_path, monkeypatch):
    import numpy as np

    from fedkd.data import splits as data

    monkeypatch.setenv(data.SPLITS_CACHE_ENV, str(tmp_path))
    args = dict(num_clients=3, num_public=90, seed=424242)
    built = data.load_splits("digits", **args)  # built here, written to tmp_path
    assert len(list(tmp_path.glob("splits-*.npz"))) == 1
    data._splits_on_disk.cache_clear()  # as a fresh process would

    def no_split(*a):
        raise AssertionError("split again although the splits are on disk")

    monkeypatch.setattr(data, "_build_splits", no_split)
    read = data.load_splits("digits", **args)
    for name in data._SPLIT_ARRAYS:
        assert np.array_equal(getattr(read, name), getattr(built, name)) and not getattr(read, name).flags.writeable
    assert all(np.array_equal(a, b) for a, b in zip(read.partitions, built.partitions))
    assert (read.name, read.num_classes, read.input_shape, dict(read.resolved)) == \
        (built.name, built.num_classes, built.input_shape, dict(built.resolved))


def test_a_corrupt_splits_file_is_built_again(tmp_path, monkeypatch):
    from fedkd.data import splits as data

    monkeypatch.setenv(data.SPLITS_CACHE_ENV, str(tmp_path))
    args = dict(num_clients=3, num_public=90, seed=434343)
    data.load_splits("digits", **args)
    [path] = tmp_path.glob("splits-*.npz")
    path.write_bytes(b"not a zip")
    data._splits_on_disk.cache_clear()
    assert data.load_splits("digits", **args).num_clients == 3
    assert path.stat().st_size > 100  # written again
