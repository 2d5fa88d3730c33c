"""One `fedkd deploy` from its options to the run's results: the order of the steps.

Owns: `Options` (what the command line asks for), the usage checks that need no file or process,
the order of what happens (every usage check, then the output folder, then TLS material and keys,
then the processes), `run.log` in the run's output folder (every process's lines, whatever the
console shows), the unenrolled-key probe, and judging whether the run completed. Must not touch:
argument parsing and exit codes (`cli`), how processes are started or stopped (`procs`,
`superlink`), how certificates are made (`pki`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fedkd.deploy.pki import (
    NodeKey, TlsFiles, check_writable, node_keys, write_node_configs, write_node_key, write_tls_files,
)
from fedkd.deploy.procs import free_ports
from fedkd.deploy.runconfig import app_defaults, build_run_config, find_app
from fedkd.deploy.superlink import FINISHED, NODE_REFUSED, SAID, DeployError, Deployment, find_binaries
from fedkd.errors import OutputError, UsageError, require_clients
from fedkd.results import RUN_LOG, summary_text


@dataclass
class Options:
    num_nodes: int
    secure: bool = False
    certs_dir: Path | None = None
    run_config: str = ""
    timeout: float = 3600.0  # seconds for the whole deployment, start to teardown
    app: str | None = None
    probe_unenrolled: bool = False  # secure mode: also start one SuperNode whose key was never enrolled
    roster: bool = True  # secure aggregation in roster mode: node identities made here (pki.write_node_configs)
    force: bool = False  # replace an earlier run's results in out
    grace: float = 10.0  # seconds between SIGTERM and SIGKILL at teardown


@dataclass(frozen=True)
class _Plan:
    """What the usage checks found, before any process starts."""

    bins: dict[str, str]  # Flower command name -> path
    cwd: Path
    app_dir: Path
    run_config: dict[str, Any]  # the overrides for `flwr run`; "out" is the prepared output folder
    certs: Path | None  # secure mode's certificates folder (resolved), else None
    rounds: int  # the run's rounds, with the app's defaults (for the console's progress)


def run_deployment(opts: Options, echo: Callable[[str], None] | None = print,
                   on_start: Callable[[Path, int], None] | None = None) -> dict:
    """Deploy, run the app once and tear down. Every line of the deployment goes to `echo` and to
    run.log; `on_start(out, rounds)` is told the output folder and the run's rounds once every
    usage check has passed. Returns results.json's dict; raises UsageError or DeployError with a
    one-line message."""
    started = time.monotonic()
    deadline = started + opts.timeout
    check_options(opts)
    plan = _plan(opts)
    tls, keys = _secure_material(plan.certs, opts.num_nodes)
    out = Path(plan.run_config["out"])
    if on_start is not None:
        on_start(out, plan.rounds)
    workdir = Path(tempfile.mkdtemp(prefix="fedkd-deploy-"))
    try:
        with _logged(out / RUN_LOG, echo) as echo_and_log:
            with Deployment(workdir, plan.bins, tls, echo=echo_and_log, cwd=plan.cwd, grace=opts.grace) as dep:
                run_id, status = _deploy_and_run(dep, plan, keys, opts, deadline)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = _completed_results(run_id, status, out)
    results["deploy_seconds"] = time.monotonic() - started
    _log_summary(out / RUN_LOG, results)
    return results


def check_options(opts: Options) -> None:
    """The usage errors that the options alone show (UsageError, one line)."""
    require_clients("N", opts.num_nodes)  # one SuperNode per client
    if opts.timeout <= 0:
        raise UsageError(f"--timeout={opts.timeout} must be > 0")
    if opts.certs_dir is not None and not opts.secure:
        raise UsageError("--certs-dir is only used with --secure")
    if opts.secure and opts.certs_dir is None:
        raise UsageError("--secure needs --certs-dir DIR (where the CA, server certificate and node keys go)")
    if opts.probe_unenrolled and not opts.secure:
        raise UsageError("--probe-unenrolled needs --secure (without it every SuperNode is accepted)")


def _plan(opts: Options) -> _Plan:
    """Find the commands and the app, check the run config and the certificates folder, and only
    then prepare the output folder (a `latest` out becomes a fresh timestamped folder; an earlier
    run's is refused without --force)."""
    from fedkd.config import Config
    from fedkd.results import prepare_out

    bins = find_binaries()
    cwd = Path.cwd()
    app_dir = find_app(opts.app, cwd)
    defaults = app_defaults(app_dir)
    run_config = build_run_config(opts.run_config, opts.num_nodes, defaults, cwd)
    rounds = Config.from_run_config({**defaults, **run_config}).rounds  # build_run_config checked it
    certs = opts.certs_dir.expanduser().resolve() if opts.secure else None
    if certs is not None:  # every usage check before the output folder is made
        check_writable(certs)
    try:
        run_config["out"] = str(prepare_out(run_config["out"], force=opts.force).resolve())
    except OutputError as exc:
        raise UsageError(str(exc)) from None
    return _Plan(bins, cwd, app_dir, run_config, certs, rounds)


def _secure_material(certs: Path | None, num_nodes: int) -> tuple[TlsFiles | None, list[NodeKey]]:
    """Secure mode: the TLS files and one key per SuperNode, in `certs` (reused while valid)."""
    if certs is None:
        return None, []
    return write_tls_files(certs), node_keys(certs / "nodes", num_nodes)


@contextmanager
def _logged(path: Path, echo: Callable[[str], None] | None):
    """An echo that also appends every line to `path`, whatever the console shows."""
    log = open(path, "a", encoding="utf-8")
    lock = threading.Lock()  # the processes' reader threads all write here

    def echo_and_log(line: str) -> None:
        with lock:
            if not log.closed:  # a reader thread may outlive teardown by a moment
                log.write(line + "\n")
                log.flush()
        if echo is not None:
            echo(line)

    try:
        yield echo_and_log
    finally:
        with lock:
            log.close()


def _deploy_and_run(dep: Deployment, plan: _Plan, keys: list[NodeKey], opts: Options,
                    deadline: float) -> tuple[int, str]:
    """Start the SuperLink, enrol the keys, start the SuperNodes (and the probe), submit the run and
    wait for it; (run id, final status)."""
    ports = free_ports(opts.num_nodes + 2)  # the SuperLink, one per SuperNode, the unenrolled probe
    dep.start_superlink(ports[0], ready_within=_within(deadline, 60.0))
    for key in keys:
        dep.say(f"enrolled {key.public.name} as node {dep.enroll(key)}")
    if opts.roster:  # authenticated secure-aggregation keys: each node's identity and the roster
        configs = [str(p) for p in write_node_configs(dep.workdir / "node-config", opts.num_nodes)]
        dep.say(f"secure-aggregation roster: {opts.num_nodes} node identities (node-config/ in the work folder)")
    else:
        configs = [f"partition-id={i} num-partitions={opts.num_nodes}" for i in range(opts.num_nodes)]
    nodes = [dep.start_supernode(f"node-{i}", configs[i], ports[1 + i], keys[i] if keys else None)
             for i in range(opts.num_nodes)]
    if opts.probe_unenrolled:
        _probe_unenrolled(dep, ports[-1], opts.num_nodes, deadline)
    dep.wait_nodes(opts.num_nodes, nodes, within=_within(deadline, 120.0))
    dep.say(f"{opts.num_nodes} SuperNodes connected; submitting the run")
    run_id = dep.submit(plan.app_dir, plan.run_config)
    dep.say(f"run {run_id} submitted (results in {plan.run_config['out']})")
    status = dep.wait_run(run_id, [dep.processes[0], *nodes], deadline)  # processes[0]: the SuperLink
    dep.say(f"run {run_id} ended: {status}")
    return run_id, status


def _probe_unenrolled(dep: Deployment, port: int, num_nodes: int, deadline: float) -> None:
    """Start one SuperNode whose key was never enrolled and require the SuperLink to refuse it."""
    key = write_node_key(NodeKey(dep.workdir / "unenrolled.key", dep.workdir / "unenrolled.pub"))
    probe = dep.start_supernode("unenrolled", f"partition-id={num_nodes} num-partitions={num_nodes + 1}", port, key)
    try:
        code = probe.wait(timeout=_within(deadline, 60.0))
    except subprocess.TimeoutExpired:
        raise DeployError("the SuperNode with an unenrolled key was not refused within 60s") from None
    if code == 0 or NODE_REFUSED not in probe.output():
        raise DeployError(f"the SuperNode with an unenrolled key was not refused (exit code {code}): "
                          f"{probe.last_line()}")
    dep.say(f"refused as expected: the SuperNode with an unenrolled key exited with code {code}")


def _within(deadline: float, at_most: float) -> float:
    """Seconds to wait for one step: what is left before `deadline`, capped at `at_most`, at least 1."""
    return max(1.0, min(at_most, deadline - time.monotonic()))


def _log_summary(path: Path, results: dict) -> None:
    """Close run.log with the summary table, as `fedkd run`'s closes (the ServerApp wrote summary.txt)."""
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"{SAID:<10}| summary (summary.txt):\n"
                  + summary_text(results, results["final"]["seconds_total"]))


def _completed_results(run_id: int, status: str, out: Path) -> dict:
    """results.json's dict when the run completed; otherwise a DeployError that says why."""
    results_path = out / "results.json"
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        results = {}
    if status != FINISHED + "completed":
        raise DeployError(f"run {run_id} ended {status.removeprefix(FINISHED)}"
                          + (f": {results['error']}" if results.get("error") else " (see the log above)"))
    if results.get("status") != "completed":
        raise DeployError(f"run {run_id} finished but {results_path} says status={results.get('status')!r}")
    return results
