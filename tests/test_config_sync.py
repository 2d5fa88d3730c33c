"""pyproject's [tool.flwr.app.config] holds every default of Config, and nothing else."""

import tomllib
from pathlib import Path

from fedkd.config import Config


def test_pyproject_defaults_match_config():
    data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    run_config = data["tool"]["flwr"]["app"]["config"]
    assert Config.from_run_config(run_config) == Config()
    assert set(run_config) == set(Config().to_run_config())
