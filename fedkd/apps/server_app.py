"""fedkd's ServerApp: read the run config, run the federation, save results in `out`.

`flwr run .` uses `app` (config from pyproject's `[tool.flwr.app.config]` and `--run-config`);
`fedkd run` builds its own with `make_server_app`, because `run_simulation` passes no run config.
With the run config, the output folder is chosen here (`fedkd.results.prepare_out`: a `latest` out
becomes a fresh timestamped folder); `fedkd run` and `fedkd deploy` choose it before they start.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from logging import INFO, WARNING
from typing import Callable, Iterator

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedkd.apps.driver import run_federation
from fedkd.apps.exchange import PollingGrid
from fedkd.config import Config
from fedkd.results import Checkpoint, RunRecorder, app_run_log, dropped_text, prepare_out, round_line, stalled_text
from fedkd.rounds import RoundRecord


def make_server_app(config: Config | None = None, on_round: Callable[[RoundRecord], None] | None = None,
                    results: dict | None = None, observe_grid: Callable[[Grid], Grid] | None = None,
                    on_phase: Callable[[str], None] | None = None, resume: Checkpoint | None = None) -> ServerApp:
    """A ServerApp bound to `config` (None: read `context.run_config`); the final results dict is
    stored in `results["value"]` when given. `observe_grid` may wrap the Grid, e.g. to record
    everything the server receives (an audit of what crosses the privacy boundary); it wraps the
    `PollingGrid` that every exchange goes through (`fedkd.apps.exchange`). `resume`: a stopped
    run's checkpoint in `config.out`, continued after its last round (`fedkd run --resume`)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        if config is not None:
            cfg, run_log = config, nullcontext()
        else:  # flwr run: the folder is chosen here, and a finished run's folder is not overwritten
            cfg = Config.from_run_config(context.run_config)
            cfg = cfg.replace(out=str(prepare_out(cfg.out)))
            _log(f"fedkd: results go to {cfg.out}")
            run_log = app_run_log(cfg.out)  # run.log there, as `fedkd run` writes it
        with run_log, server_threads(cfg):
            grid = PollingGrid(grid)  # replies collected as they arrive, not after Flower's fixed sleep
            if observe_grid is not None:
                grid = observe_grid(grid)
            final = run_federation(grid, cfg, RunRecorder(cfg, on_round=on_round or _log_round(cfg.num_clients),
                                                          on_phase=on_phase or (lambda text: _log(f"fedkd: {text}")),
                                                          resume=resume))
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


def _log_round(num_clients: int) -> Callable[[RoundRecord], None]:
    def log_round(record: RoundRecord) -> None:
        _log(f"fedkd {round_line(record, num_clients)}")  # `fedkd run`'s round line
        for warning in (dropped_text(record), stalled_text(record)):
            if warning:
                log(WARNING, "fedkd: %s", warning)

    return log_round


app = make_server_app()
