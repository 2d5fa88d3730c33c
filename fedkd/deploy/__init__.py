"""`fedkd deploy N`: the fedkd Flower app on one SuperLink and N SuperNodes, each its own process on
127.0.0.1 (Flower's Deployment Engine, no Ray), submitted with `flwr run` and torn down at the end.

The package, one job per module (each imports only those above it):

    pki.py        the local CA, the SuperLink's TLS certificate, SuperNode keys (secure mode)
    procs.py      child processes in their own sessions, their logs, the inherited marker,
                  teardown (SIGTERM, grace, SIGKILL to groups and marked processes), free ports
    runconfig.py  the app folder to submit and the `--run-config` overrides, checked against Config
    superlink.py  `Deployment`: a private FLWR_HOME, flower-superlink / flower-supernode, `flwr`
                  (enrol, list nodes, run, log, ls); `DeployError` (exit code 1)
    run.py        `Options` and `run_deployment`: usage checks, output folder, run.log, the steps
                  in order, the probe, whether the run completed
    cli.py        arguments, console, one-line errors and exit codes; `__main__.py` runs it

Must not touch: the app itself (`fedkd.apps` only runs inside the processes started here), the
user's ~/.flwr, or any fixed port. Every process is started in a new session (so Ctrl-C reaches
only this program, which then stops them in order) with FEDKD_DEPLOY_ID=<random> in its
environment, which all its descendants inherit; teardown stops each group and then every process
still carrying the marker (found through /proc on Linux), so nothing outlives it.

The names below are what `fedkd.cli` and the tests use.
"""

from fedkd.deploy.cli import add_arguments, build_parser, main
from fedkd.deploy.pki import (NodeKey, TlsFiles, check_writable, node_keys, write_node_configs, write_node_key,
                              write_tls_files)
from fedkd.deploy.procs import MARKER, Process, free_ports, marked_pids
from fedkd.deploy.run import Options, run_deployment
from fedkd.deploy.runconfig import app_defaults, build_run_config, find_app
from fedkd.deploy.superlink import (BINARIES, CONNECTION, NODE_REFUSED, Deployment, DeployError,
                                    find_binaries)

__all__ = [
    "BINARIES", "CONNECTION", "MARKER", "NODE_REFUSED", "DeployError", "Deployment", "NodeKey", "Options",
    "Process", "TlsFiles", "add_arguments", "app_defaults", "build_parser", "build_run_config",
    "check_writable", "find_app", "find_binaries", "free_ports", "main", "marked_pids", "node_keys",
    "run_deployment", "write_node_configs", "write_node_key", "write_tls_files",
]
