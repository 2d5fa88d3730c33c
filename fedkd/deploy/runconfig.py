"""What a deployment submits: the fedkd project folder (the Flower app) and its run config.

Owns: finding the app folder (`--app`, else the checkout this package belongs to, else the
current folder), reading its `[tool.flwr.app.config]` defaults, and turning `--run-config 'k=v ...'`
into the overrides for `flwr run` (`num-clients` = the number of SuperNodes, `out` absolute),
checked against `fedkd.config.Config` before anything starts. Must not touch: processes, files
other than the app's pyproject.toml, the output folder (the caller prepares it).
"""

from __future__ import annotations

import os
import shlex
import tomllib
from pathlib import Path
from typing import Any

from fedkd.errors import ConfigError, UsageError


def find_app(app: str | None, cwd: Path) -> Path:
    """The fedkd project folder to submit as the Flower app: `app` (another checkout); else the one
    this package belongs to (an editable install); else `cwd` (a regular install, run from the
    project). Its run settings are checked against `fedkd.config.Config`."""
    if app:
        candidates = [Path(app).expanduser().resolve()]
    else:  # this file is <project>/fedkd/deploy/runconfig.py
        candidates = [Path(__file__).resolve().parents[2], cwd.resolve()]
    for folder in candidates:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.flwr.app" in pyproject.read_text(encoding="utf-8"):
            return folder
    where = f"'{candidates[0]}'" if app else f"beside the fedkd package nor in '{cwd}'"
    raise UsageError(f"no Flower app (a pyproject.toml with [tool.flwr.app]) {where}; pass --app DIR")


def app_defaults(app_dir: Path) -> dict[str, Any]:
    """The app's `[tool.flwr.app.config]` table (hyphenated keys, TOML values)."""
    with open(app_dir / "pyproject.toml", "rb") as f:
        return tomllib.load(f).get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})


def build_run_config(text: str, num_nodes: int, defaults: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """The overrides to submit: the user's `k=v ...`, `num-clients` set to the number of SuperNodes,
    and `out` made absolute (against `cwd`) so the results land where the user expects."""
    from fedkd.config import Config

    given = _parse_overrides(text)
    if "num-clients" in given and given["num-clients"] != num_nodes:
        raise UsageError(f"--run-config sets num-clients={given['num-clients']} but the deployment has "
                         f"{num_nodes} SuperNodes; leave num-clients out (it is set to N)")
    overrides = {**given, "num-clients": num_nodes}
    # absolute, but not resolved: a `latest` symlink must stay `latest` (results.prepare_out gives it a new folder)
    overrides["out"] = os.path.abspath(cwd / str(overrides.get("out", defaults.get("out", Config().out))))
    try:
        Config.from_run_config({**defaults, **overrides})
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return overrides


def _parse_overrides(text: str) -> dict[str, Any]:
    """`k=v ...` read as `flwr run --run-config` reads it, refusing what flwr's parser would skip
    silently or fail on with its own error."""
    from flwr.common.config import parse_config_args

    bad = UsageError(f"--run-config {text!r} is not 'key=value ...' with TOML values "
                     "(quote strings: out=\"runs/x\")")
    try:
        if any("=" not in token for token in shlex.split(text)):
            raise bad  # flwr's parser skips such a token silently
        return parse_config_args([text]) if text.strip() else {}
    except UsageError:
        raise
    except Exception:  # shlex's ValueError, or flwr's parser (a click.ClickException for bad TOML)
        raise bad from None
