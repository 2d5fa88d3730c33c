"""Config validation: every bad value is refused with a message naming it and the valid range."""

import pytest

from fedkd.config import Config, ConfigError


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"alpha": 0}, "alpha=0.0 must be > 0"),
        ({"alpha": -1}, "alpha=-1.0 must be > 0"),
        ({"temperature": 0}, "temperature=0.0 must be > 0"),
        ({"num-clients": 1}, "num-clients=1 is too small; it must be >= 2"),
        ({"num-public": 0}, "num-public=0 is too small"),
        ({"method": "fedprox"}, "method 'fedprox' is unknown; choose one of fd, fedavg, central, local"),
        ({"dataset": "imagenet"}, "dataset 'imagenet' is unknown"),
        ({"student-model": "vit"}, "student-model 'vit' is unknown"),
        ({"teacher-models": "mlp,vit"}, "teacher-models 'vit' is unknown"),
        ({"ensemble": "median"}, "ensemble 'median' is unknown"),
        ({"partition": "zipf"}, "partition 'zipf' is unknown"),
        ({"era-temperature": 2.0}, "era-temperature=2.0 must lie in (0, 1)"),
        ({"public-sample": 900}, "public-sample=900 is larger than num-public=500"),
        ({"hard-label-weight": 1.0}, "needs public-labels=true"),
        ({"vote-weighting": "class-share", "ensemble": "logits"}, "works with ensemble mean or dsfl"),
        ({"rounds": "many"}, "rounds='many' is not a valid int"),
        ({"colour": 3}, "unknown setting 'colour'"),
        ({"dp-noise-multiplier": 1.0}, "dp-clip is 0 (off)"),
        ({"dp-clip": -1}, "dp-clip=-1.0 must be >= 0"),
        ({"dp-clip": 1, "aggregation": "plain"}, "distributed DP needs aggregation=secagg"),
        ({"dp-clip": 1, "method": "fedavg"}, "dp-clip applies to method fd"),
        ({"dp-clip": 1, "ensemble": "logits"}, "use ensemble mean or dsfl"),
        ({"dp-clip": 1, "num-clients": 4, "dp-max-dropouts": 2, "dp-colluders": 2}, "must be below num-clients=4"),
        ({"dp-clip": 1, "dp-epsilon-budget": 3}, "needs dp-noise-multiplier > 0"),
        ({"dp-clip": 1, "dp-delta": 1.5}, "dp-delta=1.5 must lie in (0, 1)"),
        ({"dp-clip": 1, "dp-mechanism": "laplace"}, "dp-mechanism 'laplace' is unknown"),
        ({"teacher-dp-noise-multiplier": -1}, "teacher-dp-noise-multiplier=-1.0 must be >= 0"),
        ({"teacher-dp-noise-multiplier": 1, "method": "fedavg"}, "trains fd or local teachers"),
        ({"teacher-dp-max-grad-norm": 0}, "teacher-dp-max-grad-norm=0.0 must be > 0"),
        ({"teacher-dp-noise-multiplier": 1, "vote-weighting": "class-share"}, "outside DP-SGD's guarantee"),
        ({"dp-epsilon-budget": float("nan")}, "dp-epsilon-budget=nan must be a finite number"),
        ({"dp-clip": 1, "dp-target-epsilon": 4, "dp-noise-multiplier": 1}, "not both"),
        ({"dp-target-epsilon": 4}, "dp-clip is 0 (off)"),
    ],
)
def test_bad_settings_are_named(settings, fragment):
    with pytest.raises(ConfigError) as err:
        Config.from_run_config(settings)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_round_trip_through_run_config():
    cfg = Config(rounds=3, alpha=0.1, teacher_models="mlp,cnn")
    assert Config.from_run_config(cfg.to_run_config()) == cfg


def test_strings_from_the_command_line_are_coerced():
    cfg = Config.from_run_config({"rounds": "7", "alpha": "0.25", "download": "true"})
    assert (cfg.rounds, cfg.alpha, cfg.download) == (7, 0.25, True)


def test_teacher_models_cycle_over_clients():
    cfg = Config(teacher_models="mlp, cnn")
    assert [cfg.teacher_model_for(i) for i in range(3)] == ["mlp", "cnn", "mlp"]


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().rounds = 9  # type: ignore[misc]
