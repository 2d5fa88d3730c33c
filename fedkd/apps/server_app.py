"""fedkd's ServerApp: read the run config, run the federation, save results in `out`.

`flwr run .` uses `app` (config from pyproject's `[tool.flwr.app.config]` and `--run-config`);
`fedkd run` builds its own with `make_server_app`, because `run_simulation` passes no run config.
With the run config, the output folder is chosen here (`fedkd.results.prepare_out`: a `latest` out
becomes a fresh timestamped folder); `fedkd run` and `fedkd deploy` choose it before they start.
"""

from __future__ import annotations

from contextlib import contextmanager
from logging import INFO, WARNING
from typing import Callable, Iterator

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedkd.apps.driver import run_federation
from fedkd.apps.exchange import PollingGrid
from fedkd.config import Config
from fedkd.results import RunRecorder, cohort_text, prepare_out, dropped_text, stalled_text


def make_server_app(config: Config | None = None, on_round: Callable[[dict], None] | None = None,
                    results: dict | None = None, observe_grid: Callable[[Grid], Grid] | None = None,
                    on_phase: Callable[[str], None] | None = None) -> ServerApp:
    """A ServerApp bound to `config` (None: read `context.run_config`); the final results dict is
    stored in `results["value"]` when given. `observe_grid` may wrap the Grid, e.g. to record
    everything the server receives (an audit of what crosses the privacy boundary); it wraps the
    `PollingGrid` that every exchange goes through (`fedkd.apps.exchange`)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        if config is not None:
            cfg = config
        else:  # flwr run: the folder is chosen here, and a finished run's folder is not overwritten
            cfg = Config.from_run_config(context.run_config)
            cfg = cfg.replace(out=str(prepare_out(cfg.out)))
            _log(f"fedkd: results go to {cfg.out}")
        grid = PollingGrid(grid)  # replies collected as they arrive, not after Flower's fixed sleep
        if observe_grid is not None:
            grid = observe_grid(grid)
        with server_threads(cfg):
            final = run_federation(grid, cfg, RunRecorder(cfg, on_round=on_round or _log_round(cfg.num_clients),
                                                          on_phase=on_phase or (lambda text: _log(f"fedkd: {text}"))))
        if results is not None:
            results["value"] = final

    return server_app


@contextmanager
def server_threads(config: Config) -> Iterator[None]:
    """torch's threads for the server's work while the block runs (`server-threads`; 0 leaves torch's
    default), then as they were: an in-process run leaves its caller's setting alone. In process,
    the ClientApp sets its own threads for each call and the Grid puts the server's back after it."""
    import torch

    before = torch.get_num_threads()
    if config.server_threads > 0:
        torch.set_num_threads(config.server_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _log(text: str) -> None:
    log(INFO, "%s", text)


def _log_round(num_clients: int) -> Callable[[dict], None]:
    def log_round(record: dict) -> None:
        acc, ratio = record.get("student_accuracy"), record.get("student_to_ensemble")
        cohort = cohort_text(record, num_clients)
        _log(f"fedkd round {record['round']}: student accuracy {'n/a' if acc is None else f'{acc:.4f}'}, "
             f"student/ensemble {'n/a' if ratio is None else f'{ratio:.2f}'}{', ' + cohort if cohort else ''}")
        for warning in (dropped_text(record), stalled_text(record)):
            if warning:
                log(WARNING, "fedkd: %s", warning)

    return log_round


app = make_server_app()
