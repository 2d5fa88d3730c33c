"""fedkd's ServerApp: read the run config, run the federation, save results in `out`.

`flwr run .` uses `app` (config from pyproject's `[tool.flwr.app.config]` and `--run-config`);
`fedkd run` builds its own with `make_server_app`, because `run_simulation` passes no run config.
"""

from __future__ import annotations

from typing import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedkd.apps.driver import run_federation
from fedkd.config import Config
from fedkd.results import RunRecorder


def make_server_app(config: Config | None = None, on_round: Callable[[dict], None] | None = None,
                    results: dict | None = None, observe_grid: Callable[[Grid], Grid] | None = None) -> ServerApp:
    """A ServerApp bound to `config` (None: read `context.run_config`); the final results dict is
    stored in `results["value"]` when given. `observe_grid` may wrap the Grid, e.g. to record
    everything the server receives (an audit of what crosses the privacy boundary)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config if config is not None else Config.from_run_config(context.run_config)
        if observe_grid is not None:
            grid = observe_grid(grid)
        final = run_federation(grid, cfg, RunRecorder(cfg, on_round=on_round or _log_round))
        if results is not None:
            results["value"] = final

    return server_app


def _log_round(record: dict) -> None:
    from flwr.common.logger import log
    from logging import INFO

    acc = record.get("student_accuracy")
    log(INFO, "fedkd round %s: student accuracy %s", record["round"], "n/a" if acc is None else f"{acc:.4f}")


app = make_server_app()
