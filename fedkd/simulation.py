"""Run a config end to end in this process, on one of two engines, or `central` without clients.

Engines (config `engine`), both running the same ServerApp and ClientApp, so the same seed gives
the same results.json rounds on either:
- `inprocess` (default): the apps called directly in this process (`fedkd.apps.inprocess`), one
  node hosting every client: no Ray to start and no message store to sweep.
- `ray`: Flower's simulation engine, one node per worker (a core's share, `client-cpus`), each
  hosting every num-nodes-th client; for several cores or a Ray cluster (`ray-address`).

Owns: `simulate`, what `fedkd run`, `fedkd bench round` and every script in `simulations/` call,
the number of nodes a simulation uses (`simulation_nodes`) and the node settings of the simulated
SuperNodes (`simulated_node_config`). Imports neither `fedkd.cli` nor
`fedkd.bench`, which both import it. Must not touch: the console (`fedkd.cli`) or the round
itself (`fedkd.apps`).

Flower, Ray and torch (through `fedkd.apps`) take about 3 s to import: they are imported when a
simulation starts, not with this module, so that `fedkd --help` (which imports it) stays fast.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from fedkd.config import Config
from fedkd.results import RunRecorder


def simulate(config: Config, on_round: Callable[["RoundRecord"], None] | None = None, verbose: bool = False,
             observe_grid=None, on_phase: Callable[[str], None] | None = None, resume=None) -> dict:
    """Run `config` end to end (a Flower simulation unless method is central) and return results.json's dict.
    `on_round` gets each round's row once saved, `on_phase` a line on what a round is doing
    now (training, each secure-aggregation stage, distillation); `observe_grid` may wrap the server's Grid
    (see `fedkd.apps.server_app.make_server_app`); `resume` a stopped run's checkpoint in
    `config.out` (`fedkd.results.read_checkpoint`), which the run continues."""
    from fedkd.apps.driver import run_federation
    from fedkd.apps.secure import NODE_CONFIG_ENV

    if config.method == "central":  # the union of private data in one place: no clients to simulate
        from fedkd.apps.server_app import server_threads

        with server_threads(config):  # the ServerApp, which sets them otherwise, is not run
            return run_federation(None, config, RunRecorder(config, on_round=on_round, on_phase=on_phase,
                                                            resume=resume))

    if not verbose:  # Flower's deprecation notice for run_simulation and per-round INFO lines
        from flwr.common.logger import update_console_handler

        update_console_handler(level=logging.ERROR)  # its console only: run.log still gets INFO
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # Simulated nodes have no --node-config: their operator (whoever runs this) pins their
    # secure-aggregation minimums here, from the run's own settings, before Ray starts them.
    before = os.environ.get(NODE_CONFIG_ENV)
    os.environ[NODE_CONFIG_ENV] = simulated_node_config(config)
    try:
        config = config.replace(num_nodes=simulation_nodes(config))
        if config.engine == "inprocess":
            return _run_inprocess(config, on_round, observe_grid, on_phase, resume)
        return _run_simulation(config, on_round, verbose, observe_grid, on_phase, resume)
    finally:  # the pins were for these simulated nodes only, not for whatever this process does next
        if before is None:
            os.environ.pop(NODE_CONFIG_ENV, None)
        else:
            os.environ[NODE_CONFIG_ENV] = before


def simulation_nodes(config: Config) -> int:
    """`num-nodes`, or with 0 (auto): one node under the in-process engine (it runs one node at a
    time), and under Ray one per worker (the cores over `client-cpus`, at most one per client; on a
    Ray cluster, `ray-address`, one per client, since its size is not known here)."""
    if config.num_nodes:
        return config.num_nodes
    if config.engine == "inprocess":
        return 1
    if config.ray_address:
        return config.num_clients
    workers = int((os.cpu_count() or 1) // max(config.client_cpus, 1e-9))
    return max(1, min(config.num_clients, workers))


def node_configs(config: Config) -> list[dict]:
    """The node config of each simulated node: node i of N hosts every N-th client from i
    (`fedkd.apps.node.hosted_clients`), as Flower's simulation numbers its nodes."""
    return [{"partition-id": i, "num-partitions": config.num_nodes} for i in range(config.num_nodes)]


def _run_inprocess(config: Config, on_round, observe_grid, on_phase=None, resume=None) -> dict:
    from fedkd.apps.client_app import app as client_app
    from fedkd.apps.inprocess import run_inprocess
    from fedkd.apps.server_app import make_server_app

    holder: dict = {}
    server_app = make_server_app(config, on_round=on_round, results=holder, observe_grid=observe_grid,
                                 on_phase=on_phase, resume=resume)
    run_inprocess(server_app, client_app, node_configs(config), seed=config.seed)
    if "value" not in holder:
        raise RuntimeError("the simulation ended without results (see the log above)")
    return holder["value"]


def _run_simulation(config: Config, on_round, verbose: bool, observe_grid, on_phase=None, resume=None) -> dict:
    from flwr.simulation import run_simulation

    from fedkd.apps.client_app import app as client_app
    from fedkd.apps.server_app import make_server_app

    holder: dict = {}
    backend = {
        "client_resources": {"num_cpus": config.client_cpus, "num_gpus": config.client_gpus},
        "init_args": {"logging_level": logging.ERROR if not verbose else logging.INFO, "log_to_driver": verbose},
    }
    if config.ray_address:  # an existing cluster: Flower's Ray backend passes init_args to ray.init
        backend["init_args"]["address"] = config.ray_address
    server_app = make_server_app(config, on_round=on_round, results=holder, observe_grid=observe_grid,
                                 on_phase=on_phase, resume=resume)
    run_simulation(server_app, client_app,
                   num_supernodes=config.num_nodes, backend_config=backend, verbose_logging=verbose)
    if "value" not in holder:
        raise RuntimeError("the simulation ended without results (see the log above)")
    return holder["value"]


def simulated_node_config(config: Config) -> str:
    """The node settings of `fedkd run`'s simulated nodes: their pins come from the run's own
    secure-aggregation settings (a deployment's SuperNodes take theirs from --node-config)."""
    pins = {"secagg-min-clients": config.secagg_min_clients,
            "secagg-require-check": str(config.secagg_consistency_check).lower()}
    if config.secagg_max_colluders >= 0:
        pins["secagg-max-colluders"] = config.secagg_max_colluders
    return " ".join(f"{k}={v}" for k, v in pins.items())
